"""JWT → `Identity`, and admin keys: who is calling, decided once at the edge (HTTP header or Authenticate message).

A token is accepted only with a key configured for its algorithm: HS256 with `jwt_secret` (development, made by
`ripple token`), RS256/ES256 with a JWKS (file, inline JSON or http(s) URL) or with the keys of an auth provider
(Convex's `auth.config.ts` `{domain, applicationID}`, keys by OIDC discovery: server/oidc.py). A token whose `iss`
is a provider's domain is verified only by that provider's keys and must name its applicationID in `aud`. Nothing
else, never `alg: none`, so a public key can never be used as an HMAC secret. Claims map to Convex's
`UserIdentity` (protocol §6).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

from server.oidc import AuthProvider, KeyFetchError, ProviderKeys, match_key, normalise_issuer

__all__ = [
    "AuthConfig",
    "AuthProvider",
    "AuthError",
    "Authenticator",
    "Identity",
    "make_dev_token",
    "parse_authorization",
]

_JWKS_ALGORITHMS = ("RS256", "ES256")
_SECRET_ALGORITHM = "HS256"
_DROPPED_CLAIMS = frozenset({"jti", "nbf", "fva", "exp"})

# OIDC claim → (Identity attribute, Convex `UserIdentity` name). be:crates/keybroker/src/broker.rs `from_token`.
_STANDARD_CLAIMS: dict[str, tuple[str, str]] = {
    "name": ("name", "name"),
    "given_name": ("given_name", "givenName"),
    "family_name": ("family_name", "familyName"),
    "nickname": ("nickname", "nickname"),
    "preferred_username": ("preferred_username", "preferredUsername"),
    "profile": ("profile_url", "profileUrl"),
    "picture": ("picture_url", "pictureUrl"),
    "website": ("website_url", "websiteUrl"),
    "email": ("email", "email"),
    "email_verified": ("email_verified", "emailVerified"),
    "gender": ("gender", "gender"),
    "birthdate": ("birthday", "birthday"),
    "zoneinfo": ("timezone", "timezone"),
    "locale": ("language", "language"),
    "phone_number": ("phone_number", "phoneNumber"),
    "phone_number_verified": ("phone_number_verified", "phoneNumberVerified"),
    "address": ("address", "address"),
    "updated_at": ("updated_at", "updatedAt"),
}
_BOOLEAN_CLAIMS = frozenset({"email_verified", "phone_number_verified"})


class AuthError(Exception):
    """A token or key that does not authenticate. `message` is safe to send to the client.

    `code` is stable for callers that branch on it: `TokenExpired`, `InvalidToken`, `NoAuthProvider`,
    `JwksUnavailable`.
    """

    def __init__(self, message: str, code: str = "InvalidToken") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified user, as `ctx.auth.get_user_identity()` describes it.

    Equal identities share cached query results, so `expires_at_s` (when to send `TokenExpired`) does not
    take part in equality; `custom_claims` does, but not in the hash (its values may be unhashable).
    """

    token_identifier: str
    subject: str
    issuer: str
    name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    nickname: str | None = None
    preferred_username: str | None = None
    profile_url: str | None = None
    picture_url: str | None = None
    website_url: str | None = None
    email: str | None = None
    email_verified: bool | None = None
    gender: str | None = None
    birthday: str | None = None
    timezone: str | None = None
    language: str | None = None
    phone_number: str | None = None
    phone_number_verified: bool | None = None
    address: str | None = None
    updated_at: str | None = None
    custom_claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    expires_at_s: float | None = field(default=None, compare=False)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Identity:
        """Build from verified JWT claims: standard OIDC claims renamed, `jti`/`nbf`/`fva`/`exp` dropped.

        Raises:
            AuthError: `sub`/`iss` missing or not strings, or a standard claim of the wrong type.
        """
        subject, issuer = _required_string(claims, "sub"), _required_string(claims, "iss")
        attributes: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        for claim, value in claims.items():
            if claim in ("sub", "iss") or claim in _DROPPED_CLAIMS:
                continue
            if claim in _STANDARD_CLAIMS:
                attributes[_STANDARD_CLAIMS[claim][0]] = _standard_claim(claim, value)
            else:
                custom[claim] = value
        exp = claims.get("exp")
        return cls(
            token_identifier=f"{issuer}|{subject}",
            subject=subject,
            issuer=issuer,
            custom_claims=MappingProxyType(custom),
            expires_at_s=float(exp) if isinstance(exp, (int, float)) else None,
            **attributes,
        )

    def to_user_identity(self) -> dict[str, Any]:
        """The camelCase `UserIdentity` a function receives; unset claims are absent, custom claims pass through."""
        identity: dict[str, Any] = {
            "tokenIdentifier": self.token_identifier,
            "subject": self.subject,
            "issuer": self.issuer,
        }
        for attribute, convex_name in _STANDARD_CLAIMS.values():
            value = getattr(self, attribute)
            if value is not None:
                identity[convex_name] = value
        for claim, value in self.custom_claims.items():
            identity.setdefault(claim, value)
        return identity

    def is_expired(self, now_s: float | None = None, leeway_s: float = 0) -> bool:
        """Whether the token behind this identity has expired (sessions then send `TokenExpired`)."""
        if self.expires_at_s is None:
            return False
        return (time.time() if now_s is None else now_s) > self.expires_at_s + leeway_s


def _required_string(claims: Mapping[str, Any], claim: str) -> str:
    value = claims.get(claim)
    if not isinstance(value, str) or not value:
        raise AuthError(f"Token is missing the required claim '{claim}' (a non-empty string)")
    return value


def _standard_claim(claim: str, value: Any) -> str | bool | None:
    """Normalise one OIDC claim to the type Convex gives it (booleans, RFC 3339 `updatedAt`, formatted address)."""
    if value is None:
        return None
    if claim in _BOOLEAN_CLAIMS:
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):  # some providers (Cognito) send strings
            return bool(value == "true")
    elif claim == "updated_at" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC).isoformat()
    elif claim == "address" and isinstance(value, Mapping):
        formatted = value.get("formatted")
        return formatted if isinstance(formatted, str) else None
    elif isinstance(value, str):
        return value
    raise AuthError(f"Token claim '{claim}' has the wrong type ({type(value).__name__})")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """What tokens and keys to accept. Built by config.py from settings.

    `jwks` is a file path, inline JWKS JSON, or an http(s) URL (fetched lazily, cached `jwks_cache_s`); `issuer`
    and `audience` apply to tokens verified by it or by `jwt_secret`. `providers` carry their own issuer and
    audience; their keys are cached `jwks_cache_s`, refetched for an unknown kid at most every
    `key_refetch_interval_s`.
    """

    jwt_secret: str | None = None
    jwks: str | None = None
    issuer: str | None = None
    audience: str | None = None
    admin_key: str | None = None
    leeway_s: float = 5
    jwks_cache_s: float = 300
    jwks_timeout_s: float = 10
    providers: tuple[AuthProvider, ...] = ()
    key_refetch_interval_s: float = 30


class Authenticator:
    """Verifies bearer tokens and admin keys against one `AuthConfig`. Thread-safe; share one per process."""

    def __init__(self, config: AuthConfig) -> None:
        """Load a JWKS file now, so a bad path fails at startup; a JWKS URL is fetched on first use.

        Raises:
            ValueError: the JWKS file or inline JSON cannot be read as a key set.
        """
        self.config = config
        self._providers: dict[str, ProviderKeys] = {}
        self._audiences: dict[str, list[str]] = {}
        for provider in config.providers:
            issuer = normalise_issuer(provider.domain)
            if issuer not in self._providers:
                self._providers[issuer] = ProviderKeys(
                    provider,
                    cache_s=config.jwks_cache_s,
                    refetch_interval_s=config.key_refetch_interval_s,
                    timeout_s=config.jwks_timeout_s,
                )
            self._audiences.setdefault(issuer, []).append(provider.application_id)
        self._jwks_client: PyJWKClient | None = None
        self._jwks_set: PyJWKSet | None = None
        if config.jwks and config.jwks.startswith(("http://", "https://")):
            self._jwks_client = PyJWKClient(
                config.jwks, cache_jwk_set=True, lifespan=config.jwks_cache_s, timeout=config.jwks_timeout_s
            )
        elif config.jwks:
            self._jwks_set = _load_jwks(config.jwks)

    @property
    def enabled(self) -> bool:
        """Whether any token can be accepted (a secret, a JWKS or an auth provider is configured)."""
        return bool(self.config.jwt_secret or self.config.jwks or self.config.providers)

    def verify(self, token: str) -> Identity:
        """Verify a JWT and return its identity. May block on a JWKS URL fetch: in async code use `verify_async`.

        Raises:
            AuthError: with a message saying what was wrong (expired, bad signature, wrong issuer, …).
        """
        header = self._header(token)
        algorithm = header["alg"]
        issuer, provider = self._provider_for(token, algorithm)
        if provider is not None:
            return self._decode_for_provider(token, issuer, provider, self._provider_key(provider, header))
        if algorithm == _SECRET_ALGORITHM:
            return self._decode(token, self.config.jwt_secret or "", algorithm)
        key = self._cached_key(header) if self._jwks_client else None
        return self._decode(token, key or self._key_from_jwks(header), algorithm)

    async def verify_async(self, token: str) -> Identity:
        """`verify` without blocking the event loop: a JWKS URL fetch runs in a worker thread.

        Raises:
            AuthError: as `verify`.
        """
        header = self._header(token)
        issuer, provider = self._provider_for(token, header["alg"])
        if provider is not None:
            cached = provider.cached_key(header)
            if cached is None:
                return await asyncio.to_thread(self.verify, token)
            return self._decode_for_provider(token, issuer, provider, cached)
        if header["alg"] == _SECRET_ALGORITHM or self._jwks_client is None:
            return self.verify(token)
        key = self._cached_key(header)
        if key is None:
            return await asyncio.to_thread(self.verify, token)
        return self._decode(token, key, header["alg"])

    def verify_admin_key(self, key: str) -> bool:
        """Constant-time comparison with the configured admin key; False when none is configured."""
        expected = self.config.admin_key
        if not expected or not isinstance(key, str):
            return False
        return hmac.compare_digest(key.encode("utf-8"), expected.encode("utf-8"))

    def _header(self, token: str) -> dict[str, Any]:
        """The token's header, with an algorithm this configuration accepts."""
        if not isinstance(token, str) or not token:
            raise AuthError("No token was provided")
        if not self.enabled:
            raise AuthError(
                "Authentication is not configured on this server: no JWT secret, JWKS or auth provider",
                "NoAuthProvider",
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as error:
            raise AuthError(f"Malformed token: {error}") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm.lower() == "none":
            raise AuthError("Unsigned tokens (alg 'none') are not accepted")
        allowed = self._allowed_algorithms()
        if algorithm not in allowed:
            raise AuthError(
                f"Token algorithm '{algorithm}' is not accepted by this server; accepted: {', '.join(allowed)}"
            )
        return header

    def _allowed_algorithms(self) -> tuple[str, ...]:
        secret = (_SECRET_ALGORITHM,) if self.config.jwt_secret else ()
        return secret + (_JWKS_ALGORITHMS if self.config.jwks or self.config.providers else ())

    def _provider_for(self, token: str, algorithm: str) -> tuple[str, ProviderKeys | None]:
        """The token's (unverified) `iss` and the provider whose domain it names, if any: that provider's keys,
        and only they, may verify it. An asymmetric token naming no provider goes to the JWKS, if one is set."""
        if not self._providers:
            return "", None
        issuer = _unverified_claims(token).get("iss")
        if not isinstance(issuer, str):
            issuer = ""
        provider = self._providers.get(normalise_issuer(issuer)) if issuer else None
        if provider is not None and algorithm == _SECRET_ALGORITHM:
            raise AuthError(
                f"Token issuer {issuer!r} is the auth provider {provider.provider.domain}, whose tokens are signed "
                "with RS256 or ES256; an HS256 token claiming it is refused"
            )
        if provider is None and algorithm != _SECRET_ALGORITHM and not self.config.jwks:
            raise AuthError(self._unknown_issuer(issuer), "NoAuthProvider")
        return issuer, provider

    def _unknown_issuer(self, issuer: str) -> str:
        domains = ", ".join(keys.provider.domain for keys in self._providers.values())
        return (
            f"Token issuer {issuer!r} is not one of this server's auth providers ({domains}): add its domain and "
            "applicationID to RIPPLE_AUTH_PROVIDERS (or the auth config file), or use a token of a listed provider"
        )

    def _provider_key(self, provider: ProviderKeys, header: Mapping[str, Any]) -> PyJWK:
        """Blocking: the provider's key for this token, refetching its keys for a kid not yet seen (rotation)."""
        try:
            key = provider.key(header)
        except KeyFetchError as error:
            raise AuthError(str(error), "JwksUnavailable") from None
        if key is None:
            raise AuthError(
                f"No key of auth provider {provider.provider.domain} matches this token (kid {header.get('kid')!r}, "
                f"alg {header['alg']}; its keys are refetched for an unknown kid at most every "
                f"{self.config.key_refetch_interval_s:g} s): the key may be retired, or the token forged"
            )
        return key

    def _decode_for_provider(self, token: str, issuer: str, provider: ProviderKeys, key: PyJWK) -> Identity:
        audiences = self._audiences[normalise_issuer(issuer)]
        return self._decode(token, key, key.algorithm_name, issuer=issuer, audience=audiences)

    def _cached_key(self, header: Mapping[str, Any]) -> PyJWK | None:
        """The signing key from the URL client's unexpired cache, or None if a fetch is needed."""
        assert self._jwks_client is not None
        cache = self._jwks_client.jwk_set_cache
        cached = cache.get() if cache is not None else None
        return match_key(cached.keys, header) if cached is not None else None

    def _key_from_jwks(self, header: Mapping[str, Any]) -> PyJWK:
        if self._jwks_set is not None:
            key = match_key(self._jwks_set.keys, header)
        else:
            key = self._fetch_key(header)
        if key is None:
            raise AuthError(
                f"No key in the configured JWKS matches this token (kid {header.get('kid')!r}, alg {header['alg']})"
            )
        return key

    def _fetch_key(self, header: Mapping[str, Any]) -> PyJWK | None:
        """Blocking: look in the (possibly refetched) URL key set; an unknown kid forces one rate-limited refresh."""
        client = self._jwks_client
        assert client is not None
        try:
            key = match_key(client.get_jwk_set().keys, header)
            if key is None and isinstance(header.get("kid"), str):
                key = match_key([client.get_signing_key(header["kid"])], header)
        except jwt.PyJWKClientConnectionError as error:
            raise AuthError(f"Could not fetch the JWKS from {client.uri}: {error}", "JwksUnavailable") from None
        except jwt.PyJWKClientError:
            return None
        except (jwt.PyJWKSetError, ValueError) as error:
            raise AuthError(f"The JWKS at {client.uri} is not a usable key set: {error}", "JwksUnavailable") from None
        return key

    def _decode(
        self,
        token: str,
        key: PyJWK | str,
        algorithm: str,
        *,
        issuer: str | None = None,
        audience: str | list[str] | None = None,
    ) -> Identity:
        """Verify signature and claims; `issuer`/`audience` are a provider's, else the configured ones."""
        config = self.config
        if issuer is None:
            issuer, audience = config.issuer, config.audience
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=audience,
                issuer=issuer,
                leeway=config.leeway_s,
                options={"require": ["exp", "iss", "sub"], "verify_aud": audience is not None},
            )
        except jwt.InvalidTokenError as error:
            raise _explain(error, token, issuer, audience, self._providers) from None
        return Identity.from_claims(claims)


def _load_jwks(source: str) -> PyJWKSet:
    """A JWKS from inline JSON or a file. Config errors surface at startup, not on the first request."""
    try:
        text = source if source.lstrip().startswith("{") else Path(source).read_text(encoding="utf-8")
        return PyJWKSet.from_dict(json.loads(text))
    except (OSError, ValueError, jwt.PyJWTError) as error:
        raise ValueError(f"Cannot load the JWKS from {source[:80]!r}: {error}") from None


def _explain(
    error: jwt.InvalidTokenError,
    token: str,
    issuer: str | None,
    audience: str | list[str] | None,
    providers: Mapping[str, ProviderKeys],
) -> AuthError:
    """Turn a PyJWT failure into a message that says what to fix."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return AuthError("Token expired", "TokenExpired")
    if isinstance(error, jwt.InvalidSignatureError):
        return AuthError("Invalid token signature")
    if isinstance(error, jwt.MissingRequiredClaimError):
        return AuthError(f"Token is missing the required claim '{error.claim}'")
    claims = _unverified_claims(token)
    if isinstance(error, jwt.InvalidIssuerError):
        domains = ", ".join(keys.provider.domain for keys in providers.values())
        also = f" nor an auth provider's domain ({domains})" if domains else ""
        return AuthError(f"Token issuer {claims.get('iss')!r} is not the configured issuer {issuer!r}{also}")
    if isinstance(error, jwt.InvalidAudienceError):
        accepted = [audience] if isinstance(audience, str) else list(audience or [])
        return AuthError(
            f"Token audience {claims.get('aud')!r} does not include the configured audience "
            f"{' or '.join(repr(name) for name in accepted)}"
        )
    if isinstance(error, jwt.ImmatureSignatureError):
        return AuthError("Token is not valid yet (nbf or iat is in the future); check the clocks")
    return AuthError(f"Invalid token: {error}")


def _unverified_claims(token: str) -> dict[str, Any]:
    """Claims for error messages only: the signature was already checked or the token is refused anyway."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        return claims
    except jwt.InvalidTokenError:
        return {}


def parse_authorization(header_value: str | None) -> tuple[Literal["bearer", "admin"], str] | None:
    """`Bearer <jwt>` → ("bearer", jwt); `Convex <key>` → ("admin", key); anything else → None.

    The scheme is case-insensitive (RFC 9110); an empty credential is no credential.
    """
    if not header_value:
        return None
    scheme, _, credential = header_value.strip().partition(" ")
    credential = credential.strip()
    if not credential:
        return None
    if scheme.lower() == "bearer":
        return ("bearer", credential)
    if scheme.lower() == "convex":
        return ("admin", credential)
    return None


def make_dev_token(
    secret: str,
    sub: str,
    *,
    issuer: str,
    audience: str | None = None,
    name: str | None = None,
    email: str | None = None,
    ttl_s: float = 3600 * 24,
) -> str:
    """An HS256 token for development (`ripple token`), accepted by a server with the same `jwt_secret`."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iss": issuer, "iat": now, "exp": now + int(ttl_s)}
    optional = {"aud": audience, "name": name, "email": email}
    claims.update({claim: value for claim, value in optional.items() if value is not None})
    return jwt.encode(claims, secret, algorithm=_SECRET_ALGORITHM)
