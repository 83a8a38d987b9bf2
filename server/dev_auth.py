"""Which auth `ripple serve` runs with, and the development secret that makes a fresh checkout's auth work.

A server with no auth configured would accept no token at all, so `ripple token` and the dashboard's sign-in
would fail on a fresh machine with nothing said. Instead, outside production, the server signs with a secret
generated once into the data directory, and `ripple token` reads the same file: both find it by the same
settings (`RIPPLE_DATA_DIR`, `.env`). Production never uses it: there, no real auth means no start.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from server.config import Settings

__all__ = ["AuthPlan", "AuthSetupError", "dev_secret_path", "ensure_dev_secret", "plan_auth", "read_dev_secret"]

DEV_SECRET_FILE = "dev-jwt-secret"
# HS256 keys shorter than the hash are brute-forceable offline from any one token (RFC 7518 §3.2).
MIN_PRODUCTION_SECRET_BYTES = 32


class AuthSetupError(Exception):
    """Auth cannot be set up as asked (production without real auth, an unusable development secret file); the
    message says what to set or do."""


@dataclass(frozen=True)
class AuthPlan:
    """`development` means: sign and verify with the secret in `dev_secret_path`, and say so at start."""

    mode: Literal["secret", "jwks", "development"]
    warnings: tuple[str, ...] = ()


def dev_secret_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / DEV_SECRET_FILE


def plan_auth(settings: Settings, production: bool) -> AuthPlan:
    """Decide (without I/O) how the server will verify tokens; raise when production lacks real auth."""
    if production:
        if not (settings.jwt_secret or settings.jwks or settings.auth_providers or settings.auth_config):
            raise AuthSetupError(
                "production mode (RIPPLE_ENV=production or --production) needs real auth and never uses the "
                "development secret: set RIPPLE_AUTH_PROVIDERS to your identity provider, as Convex's auth.config.ts "
                'lists it (\'[{"domain": "https://issuer", "applicationID": "convex"}]\'), RIPPLE_JWKS to '
                "its JWKS URL, or "
                f"RIPPLE_JWT_SECRET to an HS256 secret of at least {MIN_PRODUCTION_SECRET_BYTES} random bytes"
            )
        if settings.jwt_secret and len(settings.jwt_secret.encode()) < MIN_PRODUCTION_SECRET_BYTES:
            raise AuthSetupError(
                f"RIPPLE_JWT_SECRET is {len(settings.jwt_secret.encode())} bytes; production mode needs at least "
                f"{MIN_PRODUCTION_SECRET_BYTES} random bytes (e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))')"
            )
    warnings: tuple[str, ...] = ()
    if production and not settings.admin_key:
        warnings = ("no RIPPLE_ADMIN_KEY: trusted workers, `ripple logs` and admin calls will be refused",)
    if settings.jwt_secret:
        return AuthPlan("secret", warnings)
    if settings.jwks or settings.auth_providers or settings.auth_config:
        return AuthPlan("jwks", warnings)
    return AuthPlan("development", warnings)


def read_dev_secret(settings: Settings) -> str | None:
    """The development secret `ripple serve` made, or None when it has not run with this data directory."""
    path = dev_secret_path(settings)
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not secret:
        raise AuthSetupError(f"{path} is empty: delete it and start `ripple serve` again to make a new one")
    return secret


def ensure_dev_secret(settings: Settings) -> str:
    """Read the development secret, making it (owner-only, 0600) the first time. Created with O_EXCL, so two
    servers starting at once on one data directory cannot end up with different secrets."""
    existing = read_dev_secret(settings)
    if existing is not None:
        return existing
    path = dev_secret_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another server made it in between: use theirs
        theirs = read_dev_secret(settings)
        if theirs is None:
            raise AuthSetupError(f"{path} vanished while being read: start `ripple serve` again") from None
        return theirs
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret
