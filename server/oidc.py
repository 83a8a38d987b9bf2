"""Signing keys of OIDC auth providers, as Convex's `auth.config.ts` names them: `{domain, applicationID}`.

Keys are found by discovery (`{domain}/.well-known/openid-configuration` → `jwks_uri`) and cached, so a provider
is configured by naming it. Issuers rotate keys: a token whose `kid` is not cached triggers a refetch, at most one
per `refetch_interval_s` per provider (a stream of made-up kids must not turn into a stream of requests to the
issuer), so a rotated key is picked up without a restart, and a retired key stops verifying once the issuer no
longer serves it. A failed fetch refuses the token with the provider and URL named; it never accepts one.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK, PyJWKSet

__all__ = ["AuthProvider", "KeyFetchError", "ProviderKeys", "match_key", "normalise_issuer"]

_MAX_DOCUMENT_BYTES = 1024 * 1024


class KeyFetchError(Exception):
    """The provider's discovery document or JWKS could not be fetched or read; the message names both."""


def normalise_issuer(issuer: str) -> str:
    """Issuer URLs compare without a trailing slash: Auth0's `iss` ends in one, Clerk's does not, and an
    `auth.config.ts` may write either."""
    return issuer.rstrip("/")


@dataclass(frozen=True, slots=True)
class AuthProvider:
    """One entry of Convex's `auth.config.ts` `providers`: tokens with `iss` = `domain` and `aud` including
    `application_id` are accepted, signed (RS256/ES256) by a key the domain's OIDC discovery publishes."""

    domain: str
    application_id: str

    @property
    def discovery_url(self) -> str:
        return f"{normalise_issuer(self.domain)}/.well-known/openid-configuration"


def match_key(keys: list[PyJWK], header: Mapping[str, Any]) -> PyJWK | None:
    """The signing key for this token: same `kid` (or the only candidate when the token has none) and algorithm.

    Matching the algorithm too means an RSA key never verifies an ES256 token, nor the reverse.
    """
    algorithm, kid = header["alg"], header.get("kid")
    candidates = [
        key
        for key in keys
        if key.algorithm_name == algorithm
        and key.public_key_use in ("sig", None)
        and (kid is None or key.key_id == kid)
    ]
    return candidates[0] if len(candidates) == 1 or (kid is not None and candidates) else None


class ProviderKeys:
    """The cached key set of one provider. Thread-safe: `cached_key` never does I/O (the event loop may call it);
    `key` may fetch (call it in a worker thread), one fetch at a time per provider."""

    def __init__(
        self,
        provider: AuthProvider,
        *,
        cache_s: float,
        refetch_interval_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self._cache_s = cache_s
        self._refetch_interval_s = refetch_interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[PyJWK] | None = None
        self._fetched_at = 0.0  # when the cached keys were fetched
        self._attempted_at: float | None = None  # the last fetch, successful or not
        self._last_error: KeyFetchError | None = None

    def cached_key(self, header: Mapping[str, Any]) -> PyJWK | None:
        """The key from an unexpired cache, or None when `key` must be asked (it may fetch)."""
        keys = self._keys
        if keys is None or self._clock() - self._fetched_at > self._cache_s:
            return None
        return match_key(keys, header)

    def key(self, header: Mapping[str, Any]) -> PyJWK | None:
        """Blocking: the key for this token, fetching the key set when the cache is empty or expired, or once per
        `refetch_interval_s` when the token's kid is unknown (a rotation). None: no such key, even after that.

        Raises:
            KeyFetchError: a fetch was needed and failed (or failed less than `refetch_interval_s` ago).
        """
        with self._lock:
            now = self._clock()
            expired = self._keys is None or now - self._fetched_at > self._cache_s
            if not expired:
                assert self._keys is not None
                found = match_key(self._keys, header)
                if found is not None or not self._may_fetch(now):
                    return found
            elif self._last_error is not None and not self._may_fetch(now):
                raise self._last_error
            self._refresh(now)
            assert self._keys is not None
            return match_key(self._keys, header)

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._refetch_interval_s

    def _refresh(self, now: float) -> None:
        self._attempted_at = now
        try:
            keys = self._fetch()
        except KeyFetchError as error:
            self._last_error = error
            raise
        self._keys, self._fetched_at, self._last_error = keys, now, None

    def _fetch(self) -> list[PyJWK]:
        """Discovery, then the JWKS it names. Keys of algorithms Ripple does not verify (e.g. `enc` keys, RS512)
        are skipped, as PyJWT's key set does; a set with no usable key at all is an error."""
        provider = self.provider
        document = self._get_json(provider.discovery_url, "OIDC discovery document")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise KeyFetchError(
                f"The OIDC discovery document of auth provider {provider.domain} ({provider.discovery_url}) has no "
                f"http(s) 'jwks_uri' (got {jwks_uri!r}); check the provider's domain"
            )
        try:
            return PyJWKSet.from_dict(self._get_json(jwks_uri, "JWKS")).keys
        except (jwt.PyJWKSetError, jwt.PyJWTError, ValueError) as error:
            raise KeyFetchError(
                f"The JWKS of auth provider {provider.domain} ({jwks_uri}) is not a usable key set: {error}"
            ) from None

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        domain = self.provider.domain
        request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "ripple"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                body = response.read(_MAX_DOCUMENT_BYTES + 1)
        except urllib.error.HTTPError as error:
            raise KeyFetchError(
                f"Could not fetch the {what} of auth provider {domain} from {url}: HTTP {error.code}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise KeyFetchError(f"Could not fetch the {what} of auth provider {domain} from {url}: {reason}") from None
        if len(body) > _MAX_DOCUMENT_BYTES:
            raise KeyFetchError(f"The {what} of auth provider {domain} at {url} is larger than 1 MiB")
        try:
            document = json.loads(body)
        except ValueError as error:
            raise KeyFetchError(f"The {what} of auth provider {domain} at {url} is not JSON: {error}") from None
        if not isinstance(document, dict):
            raise KeyFetchError(f"The {what} of auth provider {domain} at {url} is not a JSON object")
        return document
