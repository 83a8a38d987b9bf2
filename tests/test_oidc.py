"""Auth providers as Convex's auth.config.ts lists them: OIDC discovery, several providers, key rotation.

Against real issuers on loopback (tests/support/oidc_issuer.py), real keys, and the real server; no mocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from server.auth import AuthConfig, Authenticator, AuthError, AuthProvider
from server.config import Settings
from server.dev_auth import plan_auth
from tests.support.oidc_issuer import Issuer, SigningKey, running_issuer
from tests.support.server import ROOT, run_server
from tests.support.ws import SyncClient

REFETCH_S = 0.3
SECRET = "dev-secret-of-at-least-thirty-two-bytes!"


@pytest.fixture(scope="module")
def rsa_keys() -> list[SigningKey]:
    return [SigningKey.new(f"rsa-{n}") for n in range(3)]


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.new("ec-1", "ES256")


@pytest.fixture
def clerk(rsa_keys: list[SigningKey]) -> Iterator[Issuer]:
    with running_issuer(rsa_keys[0]) as issuer:
        yield issuer


@pytest.fixture
def keycloak(ec_key: SigningKey) -> Iterator[Issuer]:
    """A domain with a path, as Keycloak's realms have, and ES256 keys."""
    with running_issuer(ec_key, path_prefix="/realms/app") as issuer:
        yield issuer


def authenticator(*issuers: Issuer, refetch_s: float = REFETCH_S, **config: object) -> Authenticator:
    providers = tuple(AuthProvider(issuer.domain, f"app-{n}") for n, issuer in enumerate(issuers))
    return Authenticator(AuthConfig(providers=providers, key_refetch_interval_s=refetch_s, **config))  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------- providers


def test_two_providers_at_once_each_with_its_own_keys_and_audience(
    clerk: Issuer, keycloak: Issuer, rsa_keys: list[SigningKey], ec_key: SigningKey
) -> None:
    auth = authenticator(clerk, keycloak)
    alice = auth.verify(clerk.token(rsa_keys[0], "alice", audience="app-0"))
    bob = auth.verify(keycloak.token(ec_key, "bob", audience="app-1"))
    assert (alice.issuer, alice.token_identifier) == (clerk.domain, f"{clerk.domain}|alice")
    assert (bob.issuer, bob.subject) == (keycloak.domain, "bob")
    assert clerk.hits == ["/.well-known/openid-configuration", "/keys"]
    assert keycloak.hits == ["/realms/app/.well-known/openid-configuration", "/realms/app/keys"]
    # Each provider's audience is its own: clerk's applicationID does not open keycloak.
    with pytest.raises(AuthError, match="'app-0'.*does not include the configured audience 'app-1'"):
        auth.verify(keycloak.token(ec_key, audience="app-0"))
    # A token naming one issuer but signed by another's key is refused, though that key is known.
    forged = jwt.encode(
        {"sub": "eve", "iss": clerk.domain, "aud": "app-0", "exp": int(time.time()) + 60},
        ec_key.private,
        algorithm="ES256",
        headers={"kid": ec_key.kid},
    )
    with pytest.raises(AuthError, match="No key of auth provider"):
        auth.verify(forged)


def test_keys_are_cached(clerk: Issuer, rsa_keys: list[SigningKey]) -> None:
    auth = authenticator(clerk)
    for n in range(5):
        auth.verify(clerk.token(rsa_keys[0], f"user-{n}", audience="app-0"))
    assert len(clerk.hits) == 2


def test_wrong_or_missing_audience_is_refused(clerk: Issuer, rsa_keys: list[SigningKey]) -> None:
    auth = authenticator(clerk)
    with pytest.raises(AuthError, match="audience 'convex' does not include the configured audience 'app-0'"):
        auth.verify(clerk.token(rsa_keys[0], audience="convex"))
    with pytest.raises(AuthError, match="missing the required claim 'aud'"):
        auth.verify(clerk.token(rsa_keys[0], audience=None))
    # A list audience that includes it is fine (OIDC allows several).
    assert auth.verify(clerk.token(rsa_keys[0], audience=["other", "app-0"])).subject == "user-1"  # type: ignore[arg-type]


def test_unknown_issuer_is_refused_naming_the_configured_providers(clerk: Issuer, rsa_keys: list[SigningKey]) -> None:
    auth = authenticator(clerk)
    stranger = Issuer("https://stranger.example", [rsa_keys[0]])
    with pytest.raises(AuthError, match="'https://stranger.example' is not one of this server's auth providers") as e:
        auth.verify(stranger.token(rsa_keys[0], audience="app-0"))
    assert clerk.domain in e.value.message and "RIPPLE_AUTH_PROVIDERS" in e.value.message
    assert e.value.code == "NoAuthProvider"
    assert clerk.hits == []  # nothing fetched for a stranger


def test_issuer_matches_with_or_without_a_trailing_slash(clerk: Issuer, rsa_keys: list[SigningKey]) -> None:
    """Auth0's `iss` ends in '/', an auth.config.ts may write either."""
    auth = Authenticator(AuthConfig(providers=(AuthProvider(clerk.domain + "/", "convex"),)))
    identity = auth.verify(clerk.token(rsa_keys[0], iss=clerk.domain + "/"))
    assert identity.issuer == clerk.domain + "/"
    assert auth.verify(clerk.token(rsa_keys[0])).issuer == clerk.domain
    assert clerk.hits[0] == "/.well-known/openid-configuration"


def test_hs256_token_claiming_a_provider_is_refused(clerk: Issuer) -> None:
    auth = authenticator(clerk, jwt_secret=SECRET, issuer=clerk.domain)
    token = jwt.encode(
        {"sub": "eve", "iss": clerk.domain, "aud": "app-0", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"
    )
    with pytest.raises(AuthError, match="HS256 token claiming it is refused"):
        auth.verify(token)


def test_secret_and_providers_together(clerk: Issuer, rsa_keys: list[SigningKey]) -> None:
    """RIPPLE_JWT_SECRET keeps working beside providers; a provider's token still needs the provider's key."""
    auth = authenticator(clerk, jwt_secret=SECRET, issuer="https://ripple.local")
    dev = jwt.encode(
        {"sub": "dev", "iss": "https://ripple.local", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"
    )
    assert auth.verify(dev).subject == "dev"
    assert auth.verify(clerk.token(rsa_keys[0], audience="app-0")).subject == "user-1"
    with pytest.raises(AuthError, match="is not one of this server's auth providers"):
        auth.verify(Issuer("https://elsewhere.example", []).token(rsa_keys[0]))


# ---------------------------------------------------------------------------------------------- rotation


def test_rotated_keys_are_picked_up_and_retired_ones_refused(clerk: Issuer, rsa_keys: list[SigningKey]) -> None:
    old, new = rsa_keys[0], rsa_keys[1]
    auth = authenticator(clerk)
    assert auth.verify(clerk.token(old, audience="app-0")).subject == "user-1"
    assert len(clerk.hits) == 2

    clerk.published = [old, new]  # the issuer publishes the next key, then signs with it
    time.sleep(REFETCH_S)
    assert auth.verify(clerk.token(new, "after-rotation", audience="app-0")).subject == "after-rotation"
    assert len(clerk.hits) == 4  # one refetch: discovery, JWKS
    assert auth.verify(clerk.token(old, audience="app-0")).subject == "user-1"  # both served: both good

    clerk.published = [new]  # the old key is retired
    time.sleep(REFETCH_S)
    # A cache learns of a retirement when it refetches: for an unknown kid (here), or on expiry (next test).
    with pytest.raises(AuthError, match="No key of auth provider"):
        auth.verify(clerk.token(rsa_keys[2], audience="app-0"))  # an unknown kid: refetch, then refused
    assert len(clerk.hits) == 6
    with pytest.raises(AuthError, match="No key of auth provider .*kid 'rsa-0'.*may be retired"):
        auth.verify(clerk.token(old, audience="app-0"))
    assert auth.verify(clerk.token(new, audience="app-0")).subject == "user-1"


def test_retired_key_is_refused_once_the_cache_expires(clerk: Issuer, rsa_keys: list[SigningKey]) -> None:
    old, new = rsa_keys[0], rsa_keys[1]
    auth = authenticator(clerk, jwks_cache_s=0.3)
    auth.verify(clerk.token(old, audience="app-0"))
    clerk.published = [new]
    time.sleep(0.4)
    with pytest.raises(AuthError, match="kid 'rsa-0'"):
        auth.verify(clerk.token(old, audience="app-0"))
    assert len(clerk.hits) == 4


def test_unknown_kids_refetch_at_most_once_per_interval(clerk: Issuer, rsa_keys: list[SigningKey]) -> None:
    auth = authenticator(clerk, refetch_s=1.0)
    auth.verify(clerk.token(rsa_keys[0], audience="app-0"))
    forged = [clerk.token(SigningKey(f"made-up-{n}", "RS256", rsa_keys[2].private)) for n in range(20)]
    for token in forged[:10]:  # within the interval of the first fetch: no refetch at all
        with pytest.raises(AuthError, match="No key of auth provider"):
            auth.verify(token)
    assert len(clerk.hits) == 2
    time.sleep(1.0)
    for token in forged[10:]:
        with pytest.raises(AuthError, match="No key of auth provider"):
            auth.verify(token)
    assert len(clerk.hits) == 4  # one refetch for all ten
    # A key the issuer starts publishing within the interval waits for it: refused now, not accepted unverified.
    clerk.published = [rsa_keys[0], rsa_keys[1]]
    with pytest.raises(AuthError, match="kid 'rsa-1'"):
        auth.verify(clerk.token(rsa_keys[1], audience="app-0"))
    assert len(clerk.hits) == 4
    time.sleep(1.0)
    assert auth.verify(clerk.token(rsa_keys[1], audience="app-0")).subject == "user-1"


async def test_concurrent_tokens_of_a_new_key_fetch_once(clerk: Issuer, rsa_keys: list[SigningKey]) -> None:
    auth = authenticator(clerk)
    await auth.verify_async(clerk.token(rsa_keys[0], audience="app-0"))
    clerk.published = [rsa_keys[0], rsa_keys[1]]
    await asyncio.sleep(REFETCH_S)
    tokens = [clerk.token(rsa_keys[1], f"u{n}", audience="app-0") for n in range(8)]
    identities = await asyncio.gather(*(auth.verify_async(token) for token in tokens))
    assert [identity.subject for identity in identities] == [f"u{n}" for n in range(8)]
    assert len(clerk.hits) == 4
    await auth.verify_async(clerk.token(rsa_keys[1], audience="app-0"))  # from the cache, on the loop
    assert len(clerk.hits) == 4


# ---------------------------------------------------------------------------------------------- failures


def test_broken_discovery_is_reported_with_provider_and_url(clerk: Issuer, rsa_keys: list[SigningKey]) -> None:
    clerk.broken = True
    auth = authenticator(clerk)
    with pytest.raises(AuthError) as caught:
        auth.verify(clerk.token(rsa_keys[0], audience="app-0"))
    message = caught.value.message
    assert caught.value.code == "JwksUnavailable"
    assert f"auth provider {clerk.domain}" in message
    assert f"{clerk.domain}/.well-known/openid-configuration: HTTP 500" in message
    # Failing again within the interval answers from memory, without hammering the issuer.
    with pytest.raises(AuthError, match="HTTP 500"):
        auth.verify(clerk.token(rsa_keys[0], audience="app-0"))
    assert len(clerk.hits) == 1
    clerk.broken = False
    time.sleep(REFETCH_S)
    assert auth.verify(clerk.token(rsa_keys[0], audience="app-0")).subject == "user-1"


def test_unreachable_issuer_is_reported(rsa_keys: list[SigningKey]) -> None:
    domain = f"http://127.0.0.1:{closed_port()}"
    auth = Authenticator(AuthConfig(providers=(AuthProvider(domain, "convex"),), jwks_timeout_s=2))
    with pytest.raises(AuthError, match=f"auth provider {domain} from {domain}/.well-known/openid-configuration"):
        auth.verify(Issuer(domain, []).token(rsa_keys[0]))


def test_discovery_without_jwks_uri_and_garbage_jwks_are_reported(rsa_keys: list[SigningKey]) -> None:
    with running_issuer(rsa_keys[0]) as issuer:
        issuer.documents = lambda path: (200, b'{"issuer": "x"}')  # type: ignore[method-assign]
        with pytest.raises(AuthError, match="has no http\\(s\\) 'jwks_uri'"):
            authenticator(issuer).verify(issuer.token(rsa_keys[0], audience="app-0"))
    with running_issuer(rsa_keys[0]) as issuer:
        original = issuer.documents
        issuer.documents = lambda path: (200, b'{"keys": 5}') if path == "/keys" else original(path)  # type: ignore[method-assign]
        with pytest.raises(AuthError, match=f"JWKS of auth provider {issuer.domain} \\({issuer.domain}/keys\\)"):
            authenticator(issuer).verify(issuer.token(rsa_keys[0], audience="app-0"))


# ---------------------------------------------------------------------------------------------- settings


def test_providers_from_the_environment_and_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(
        "RIPPLE_AUTH_PROVIDERS", json.dumps([{"domain": "https://clerk.example.com", "applicationID": "convex"}])
    )
    config = tmp_path / "auth_config.json"
    config.write_text(json.dumps({"providers": [{"domain": "https://tenant.auth0.com/", "applicationID": "api"}]}))
    monkeypatch.setenv("RIPPLE_AUTH_CONFIG", str(config))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [(p.domain, p.application_id) for p in settings.all_auth_providers()] == [
        ("https://clerk.example.com", "convex"),
        ("https://tenant.auth0.com/", "api"),
    ]
    assert plan_auth(settings, production=True).mode == "jwks"  # real auth: production starts, no dev secret


def test_bad_auth_config_says_what_is_wrong(tmp_path: Path) -> None:
    config = tmp_path / "auth_config.json"
    config.write_text(json.dumps({"providers": [{"domain": "clerk.example.com", "applicationID": "convex"}]}))
    with pytest.raises(ValueError, match="(?s)auth_config.json.*is not an http\\(s\\) URL"):
        Settings(auth_config=config)
    config.write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read the auth config"):
        Settings(auth_config=config)
    with pytest.raises(ValueError, match="applicationID"):
        Settings(auth_providers=[{"domain": "https://x.example"}])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------- the server


async def test_server_accepts_provider_tokens_over_http_and_sync(
    fresh_dsn: str, clerk: Issuer, keycloak: Issuer, rsa_keys: list[SigningKey], ec_key: SigningKey
) -> None:
    providers = [
        {"domain": clerk.domain, "applicationID": "convex"},
        {"domain": keycloak.domain, "applicationID": "realm-app"},
    ]
    async with run_server(
        fresh_dsn, jwt_secret=None, auth_providers=providers, auth_key_refetch_interval_s=REFETCH_S
    ) as ripple:
        r = await ripple.http("query", "testing:whoami", token=clerk.token(rsa_keys[0], "alice"))
        assert r.status_code == 200 and r.json()["value"]["subject"] == "alice", r.text
        assert r.json()["value"]["issuer"] == clerk.domain
        r = await ripple.http("query", "testing:whoami", token=keycloak.token(ec_key, "bob", audience="realm-app"))
        assert r.status_code == 200 and r.json()["value"]["tokenIdentifier"] == f"{keycloak.domain}|bob", r.text

        refused = {
            "wrong audience": clerk.token(rsa_keys[0], audience="realm-app"),
            "unknown issuer": Issuer("https://evil.example", []).token(rsa_keys[0]),
            "kid not published": clerk.token(rsa_keys[2]),
        }
        for what, token in refused.items():
            r = await ripple.http("query", "testing:whoami", token=token)
            assert r.status_code == 401 and r.json()["code"] == "Unauthenticated", (what, r.text)
            assert {
                "wrong audience": "'realm-app' does not include",
                "unknown issuer": "not one of this server's auth providers",
                "kid not published": "kid 'rsa-2'",
            }[what] in r.json()["message"], (what, r.text)

        # Rotation mid-run, seen through the sync socket: a new key works after the refetch, the old is refused.
        clerk.published = [rsa_keys[1]]
        await asyncio.sleep(REFETCH_S)
        client = await SyncClient.connect(ripple.ws_url)
        try:
            confirmed = await client.authenticate(clerk.token(rsa_keys[1], "carol"))
            assert confirmed["type"] == "Transition", confirmed
            qid = await client.subscribe("testing:whoami", {})
            assert client.results[qid]["subject"] == "carol"
        finally:
            await client.close()
        client = await SyncClient.connect(ripple.ws_url)
        try:
            refusal = await client.authenticate(clerk.token(rsa_keys[0], "mallory"))
            assert refusal["type"] == "AuthError" and "kid 'rsa-0'" in refusal["error"], refusal
        finally:
            await client.close()


def test_serve_with_a_bad_auth_config_names_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "auth_config.json"
    config.write_text('{"providers": [{"domain": "https://x.example"}]}')
    env = {**os.environ, "RIPPLE_AUTH_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "RIPPLE_AUTH_CONFIG" in done.stderr and "applicationID" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
