"""An admin acting as a user: Convex's `setAdminAuth(key, actingAs)`, for the console's "run as" and for tests.

The JS client sends the identity two ways. Over sync, `Authenticate {tokenType: "Admin", value: key,
impersonating: {...UserIdentityAttributes}}`; over HTTP (`ConvexHttpClient`), `Authorization: Convex
<key>:<base64 of the attributes' JSON>`. Either way the caller is admin AND has that identity, so app code sees
`ctx.auth.get_user_identity()` as the user's, while internal functions stay reachable.

`tokenIdentifier` follows Convex (`UserIdentityAttributes::try_from`): given, or `issuer|subject`. Unlike
Convex, a missing `issuer` defaults to the server's own token issuer, so `{subject: "alice"}` acts as the same
user a real token for alice would be (whose data is keyed by that tokenIdentifier).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from server.auth import Authenticator, AuthError, Identity
from server.functions.context import Caller

__all__ = ["acting_identity", "admin_caller", "default_issuer", "split_admin_credential"]

# Convex `UserIdentityAttributes` (camelCase) → `Identity` attribute; the rest are custom claims.
_ATTRIBUTES = {
    "name": "name",
    "givenName": "given_name",
    "familyName": "family_name",
    "nickname": "nickname",
    "preferredUsername": "preferred_username",
    "profileUrl": "profile_url",
    "pictureUrl": "picture_url",
    "websiteUrl": "website_url",
    "email": "email",
    "emailVerified": "email_verified",
    "gender": "gender",
    "birthday": "birthday",
    "timezone": "timezone",
    "language": "language",
    "phoneNumber": "phone_number",
    "phoneNumberVerified": "phone_number_verified",
    "address": "address",
    "updatedAt": "updated_at",
}
_BOOLEANS = frozenset({"emailVerified", "phoneNumberVerified"})


def default_issuer(authenticator: Authenticator) -> str | None:
    """The issuer an identity without one is given: the configured token issuer, else the only auth provider's."""
    config = authenticator.config
    if config.issuer:
        return config.issuer
    if len(config.providers) == 1:
        return config.providers[0].domain
    return None


def _optional_string(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise AuthError(f"impersonating.{name} must be a non-empty string, got {json.dumps(value)[:60]}")
    return value


def acting_identity(attributes: Any, issuer_default: str | None) -> Identity:
    """The identity an admin acts as, from Convex's `UserIdentityAttributes`.

    Raises:
        AuthError: not an object, no subject and no tokenIdentifier, an attribute of the wrong type.
    """
    if not isinstance(attributes, Mapping):
        raise AuthError('impersonating must be an object of user identity attributes, e.g. {"subject": "alice"}')
    subject = _optional_string(attributes, "subject")
    issuer = _optional_string(attributes, "issuer") or issuer_default
    token_identifier = _optional_string(attributes, "tokenIdentifier")
    if token_identifier is None:
        if subject is None or issuer is None:
            raise AuthError(
                'impersonating needs "tokenIdentifier", or "subject" and "issuer" (this server has no default issuer)'
                if subject
                else 'impersonating needs "subject" (or "tokenIdentifier"): the user to act as'
            )
        token_identifier = f"{issuer}|{subject}"
    known: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    for name, value in attributes.items():
        if name in ("subject", "issuer", "tokenIdentifier") or value is None:
            continue
        if name in _ATTRIBUTES:
            wanted = bool if name in _BOOLEANS else str
            if not isinstance(value, wanted):
                raise AuthError(f"impersonating.{name} must be a {wanted.__name__}, got {type(value).__name__}")
            known[_ATTRIBUTES[name]] = value
        else:
            custom[name] = value
    return Identity(
        token_identifier=token_identifier,
        subject=subject or token_identifier,
        issuer=issuer or "",
        custom_claims=MappingProxyType(custom),
        **known,
    )


def admin_caller(attributes: Any, authenticator: Authenticator) -> Caller:
    """The caller of a valid admin key: admin, and acting as the user `attributes` name when given.

    Raises:
        AuthError: the attributes are not a user identity (see `acting_identity`).
    """
    if attributes is None:
        return Caller(is_admin=True)
    return Caller(acting_identity(attributes, default_issuer(authenticator)), is_admin=True)


def split_admin_credential(credential: str, authenticator: Authenticator) -> tuple[bool, Any]:
    """`<key>` or `<key>:<base64 JSON attributes>` (ConvexHttpClient's form) → (key valid, attributes or None).

    The whole credential is tried as the key first, so a key that itself contains ':' still works.

    Raises:
        AuthError: the key is good but the part after ':' is not base64 of a JSON object.
    """
    if authenticator.verify_admin_key(credential):
        return True, None
    key, sep, encoded = credential.rpartition(":")
    if not sep or not authenticator.verify_admin_key(key):
        return False, None
    try:
        padded = encoded + "=" * (-len(encoded) % 4)
        attributes = json.loads(base64.b64decode(padded, validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise AuthError(
            "the admin key is followed by ':' and something that is not base64 of a JSON object; send "
            "`Convex <key>` or `Convex <key>:<base64 of the acting user's identity attributes>`"
        ) from None
    return True, attributes
