"""server/auth.py: real tokens, real keys, a real JWKS server; no mocks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from server import auth
from server.auth import AuthConfig, Authenticator, AuthError, Identity, make_dev_token, parse_authorization

SECRET = "dev-secret-of-at-least-thirty-two-bytes!"
ISSUER = "https://issuer.example"
AUDIENCE = "ripple-app"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "user-1", "iss": ISSUER, "iat": now, "exp": now + 600, **extra}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_token(alg: str, payload: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(payload).encode())}."


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    jwks: dict[str, Any]


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa-1", "use": "sig", "alg": "RS256"}
    ec_jwk = {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec-1", "use": "sig"}
    return Keys(rsa=rsa_key, ec=ec_key, jwks={"keys": [rsa_jwk, ec_jwk]})


@pytest.fixture
def jwks_file(keys: Keys, tmp_path: Path) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks))
    return str(path)


@dataclass
class JwksServer:
    url: str
    hits: list[str]


@pytest.fixture
def jwks_server(keys: Keys) -> Iterator[JwksServer]:
    hits: list[str] = []
    body = json.dumps(keys.jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield JwksServer(url=f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json", hits=hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def hs(**config: Any) -> Authenticator:
    return Authenticator(AuthConfig(jwt_secret=SECRET, **config))


# ---------------------------------------------------------------------------------------------- HS256


def test_hs256_token_is_accepted() -> None:
    identity = hs(issuer=ISSUER).verify(jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert identity.subject == "user-1"
    assert identity.issuer == ISSUER
    assert identity.token_identifier == f"{ISSUER}|user-1"


def test_bad_signature_is_refused() -> None:
    token = jwt.encode(claims(), "another-secret-of-at-least-thirty-two-b", algorithm="HS256")
    with pytest.raises(AuthError, match="Invalid token signature"):
        hs().verify(token)


def test_tampered_payload_is_refused() -> None:
    header, _, signature = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    forged = b64url(json.dumps(claims(sub="admin")).encode())
    with pytest.raises(AuthError, match="Invalid token signature"):
        hs().verify(f"{header}.{forged}.{signature}")


def test_expired_token_is_refused_after_the_leeway() -> None:
    now = int(time.time())
    with pytest.raises(AuthError, match="Token expired") as caught:
        hs().verify(jwt.encode(claims(exp=now - 60), SECRET, algorithm="HS256"))
    assert caught.value.code == "TokenExpired"
    hs(leeway_s=120).verify(jwt.encode(claims(exp=now - 60), SECRET, algorithm="HS256"))


def test_token_without_exp_is_refused() -> None:
    payload = claims()
    del payload["exp"]
    with pytest.raises(AuthError, match="missing the required claim 'exp'"):
        hs().verify(jwt.encode(payload, SECRET, algorithm="HS256"))


@pytest.mark.parametrize("claim", ["sub", "iss"])
def test_token_without_sub_or_iss_is_refused(claim: str) -> None:
    payload = claims()
    del payload[claim]
    with pytest.raises(AuthError, match=f"required claim '{claim}'"):
        hs().verify(jwt.encode(payload, SECRET, algorithm="HS256"))


def test_token_not_yet_valid_is_refused() -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 600), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="not valid yet"):
        hs().verify(token)


def test_wrong_issuer_is_refused_with_both_names() -> None:
    token = jwt.encode(claims(iss="https://evil.example"), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="Token issuer 'https://evil.example' is not the configured issuer"):
        hs(issuer=ISSUER).verify(token)


def test_audience_is_checked_when_configured() -> None:
    authenticator = hs(audience=AUDIENCE)
    authenticator.verify(jwt.encode(claims(aud=AUDIENCE), SECRET, algorithm="HS256"))
    authenticator.verify(jwt.encode(claims(aud=["other", AUDIENCE]), SECRET, algorithm="HS256"))
    with pytest.raises(AuthError, match="audience 'other-app' does not include the configured audience"):
        authenticator.verify(jwt.encode(claims(aud="other-app"), SECRET, algorithm="HS256"))
    with pytest.raises(AuthError, match="'aud'"):
        authenticator.verify(jwt.encode(claims(), SECRET, algorithm="HS256"))


def test_audience_is_ignored_when_not_configured() -> None:
    hs().verify(jwt.encode(claims(aud="anything"), SECRET, algorithm="HS256"))


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg: str, jwks_file: str) -> None:
    token = unsigned_token(alg, claims())
    for authenticator in (hs(), Authenticator(AuthConfig(jwks=jwks_file))):
        with pytest.raises(AuthError, match="alg 'none'"):
            authenticator.verify(token)


def test_malformed_and_empty_tokens_are_refused() -> None:
    with pytest.raises(AuthError, match="Malformed token"):
        hs().verify("not-a-jwt")
    with pytest.raises(AuthError, match="No token"):
        hs().verify("")


def test_unconfigured_server_refuses_every_token() -> None:
    with pytest.raises(AuthError, match="not configured") as caught:
        Authenticator(AuthConfig()).verify(jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert caught.value.code == "NoAuthProvider"


def test_other_hmac_algorithms_are_refused() -> None:
    with pytest.raises(AuthError, match="'HS512' is not accepted"):
        hs().verify(jwt.encode(claims(), SECRET * 2, algorithm="HS512"))


# ---------------------------------------------------------------------------------------------- JWKS file


def test_rs256_and_es256_via_jwks_file(keys: Keys, jwks_file: str) -> None:
    authenticator = Authenticator(AuthConfig(jwks=jwks_file, issuer=ISSUER))
    rs = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(sub="user-2"), keys.ec, algorithm="ES256", headers={"kid": "ec-1"})
    assert authenticator.verify(rs).subject == "user-1"
    assert authenticator.verify(es).subject == "user-2"


def test_inline_jwks_json_works_like_a_file(keys: Keys) -> None:
    authenticator = Authenticator(AuthConfig(jwks=json.dumps(keys.jwks)))
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    assert authenticator.verify(token).subject == "user-1"


def test_token_without_kid_uses_the_only_key_for_its_algorithm(keys: Keys, jwks_file: str) -> None:
    token = jwt.encode(claims(), keys.ec, algorithm="ES256")
    assert Authenticator(AuthConfig(jwks=jwks_file)).verify(token).subject == "user-1"


def test_hs256_is_refused_when_only_a_jwks_is_configured(keys: Keys, jwks_file: str) -> None:
    authenticator = Authenticator(AuthConfig(jwks=jwks_file))
    with pytest.raises(AuthError, match="'HS256' is not accepted"):
        authenticator.verify(jwt.encode(claims(), SECRET, algorithm="HS256"))


def test_public_key_as_hmac_secret_is_refused(keys: Keys, jwks_file: str) -> None:
    """The classic key confusion: an HS256 token whose HMAC key is the server's public RSA key."""
    pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    signature = b64url(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    token = f"{header}.{payload}.{signature}"
    with pytest.raises(AuthError, match="'HS256' is not accepted"):
        Authenticator(AuthConfig(jwks=jwks_file)).verify(token)
    with pytest.raises(AuthError, match="Invalid token signature"):
        Authenticator(AuthConfig(jwks=jwks_file, jwt_secret=SECRET)).verify(token)


def test_key_of_the_wrong_type_for_the_algorithm_is_refused(keys: Keys, jwks_file: str) -> None:
    token = jwt.encode(claims(), keys.ec, algorithm="ES256", headers={"kid": "rsa-1"})
    with pytest.raises(AuthError, match="No key in the configured JWKS matches"):
        Authenticator(AuthConfig(jwks=jwks_file)).verify(token)


def test_rs256_signed_by_an_unknown_key_is_refused(jwks_file: str) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(AuthError, match="Invalid token signature"):
        Authenticator(AuthConfig(jwks=jwks_file)).verify(token)


def test_unknown_kid_is_refused(keys: Keys, jwks_file: str) -> None:
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rotated-away"})
    with pytest.raises(AuthError, match="kid 'rotated-away'"):
        Authenticator(AuthConfig(jwks=jwks_file)).verify(token)


def test_unreadable_jwks_file_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Cannot load the JWKS"):
        Authenticator(AuthConfig(jwks=str(tmp_path / "missing.json")))
    (tmp_path / "empty.json").write_text('{"keys": []}')
    with pytest.raises(ValueError, match="Cannot load the JWKS"):
        Authenticator(AuthConfig(jwks=str(tmp_path / "empty.json")))


# ---------------------------------------------------------------------------------------------- JWKS URL


def test_rs256_via_jwks_url_is_fetched_once_and_cached(keys: Keys, jwks_server: JwksServer) -> None:
    authenticator = Authenticator(AuthConfig(jwks=jwks_server.url, issuer=ISSUER))
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    assert authenticator.verify(token).subject == "user-1"
    assert authenticator.verify(token).subject == "user-1"
    assert jwks_server.hits == ["/.well-known/jwks.json"]


async def test_verify_async_fetches_in_a_thread_then_uses_the_cache(keys: Keys, jwks_server: JwksServer) -> None:
    authenticator = Authenticator(AuthConfig(jwks=jwks_server.url))
    rs = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(sub="user-2"), keys.ec, algorithm="ES256", headers={"kid": "ec-1"})
    assert (await authenticator.verify_async(rs)).subject == "user-1"
    assert (await authenticator.verify_async(es)).subject == "user-2"
    assert len(jwks_server.hits) == 1


async def test_verify_async_with_secret_and_errors() -> None:
    authenticator = hs()
    assert (await authenticator.verify_async(jwt.encode(claims(), SECRET, algorithm="HS256"))).subject == "user-1"
    with pytest.raises(AuthError, match="Token expired"):
        await authenticator.verify_async(jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256"))


def test_unknown_kid_at_a_jwks_url_is_refused(keys: Keys, jwks_server: JwksServer) -> None:
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "nope"})
    with pytest.raises(AuthError, match="kid 'nope'"):
        Authenticator(AuthConfig(jwks=jwks_server.url)).verify(token)


async def test_unreachable_jwks_url_is_reported(keys: Keys) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound then closed: nothing listens there
    authenticator = Authenticator(AuthConfig(jwks=f"http://127.0.0.1:{port}/jwks.json", jwks_timeout_s=2))
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(AuthError, match="Could not fetch the JWKS") as caught:
        await authenticator.verify_async(token)
    assert caught.value.code == "JwksUnavailable"


def test_jwks_url_serving_garbage_is_reported(keys: Keys) -> None:
    class Garbage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>not json</html>")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Garbage) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        authenticator = Authenticator(AuthConfig(jwks=f"http://127.0.0.1:{server.server_address[1]}/jwks"))
        token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
        try:
            with pytest.raises(AuthError, match="not a usable key set") as caught:
                authenticator.verify(token)
        finally:
            server.shutdown()
            thread.join(timeout=5)
    assert caught.value.code == "JwksUnavailable"


# ---------------------------------------------------------------------------------------------- identity


def test_identity_maps_oidc_claims_to_convex_names() -> None:
    token = jwt.encode(
        claims(
            jti="abc",
            nbf=int(time.time()) - 10,
            fva=[0, 0],
            name="Ada Lovelace",
            given_name="Ada",
            family_name="Lovelace",
            nickname="ada",
            preferred_username="ada.l",
            profile="https://p.example/ada",
            picture="https://p.example/ada.png",
            website="https://ada.example",
            email="ada@example.com",
            email_verified=True,
            gender="female",
            birthdate="1815-12-10",
            zoneinfo="Europe/London",
            locale="en-GB",
            phone_number="+44 20 0000 0000",
            phone_number_verified="false",
            address={"formatted": "12 St James's Square, London"},
            updated_at=1724284800,
            org_id="org_42",
            aud="ripple",
        ),
        SECRET,
        algorithm="HS256",
    )
    identity = hs().verify(token).to_user_identity()
    iat = identity.pop("iat")
    assert isinstance(iat, int)
    assert identity == {
        "tokenIdentifier": f"{ISSUER}|user-1",
        "subject": "user-1",
        "issuer": ISSUER,
        "name": "Ada Lovelace",
        "givenName": "Ada",
        "familyName": "Lovelace",
        "nickname": "ada",
        "preferredUsername": "ada.l",
        "profileUrl": "https://p.example/ada",
        "pictureUrl": "https://p.example/ada.png",
        "websiteUrl": "https://ada.example",
        "email": "ada@example.com",
        "emailVerified": True,
        "gender": "female",
        "birthday": "1815-12-10",
        "timezone": "Europe/London",
        "language": "en-GB",
        "phoneNumber": "+44 20 0000 0000",
        "phoneNumberVerified": False,
        "address": "12 St James's Square, London",
        "updatedAt": "2024-08-22T00:00:00+00:00",
        "org_id": "org_42",
        "aud": "ripple",
    }


def test_identity_is_hashable_and_equal_across_token_expiry() -> None:
    now = time.time()
    first = Identity.from_claims(claims(exp=now + 10, iat=1, role={"admin": True}))
    second = Identity.from_claims(claims(exp=now + 999, iat=1, role={"admin": True}))
    assert first == second and hash(first) == hash(second)
    assert first.expires_at_s == pytest.approx(now + 10)
    assert not first.is_expired() and first.is_expired(now_s=now + 11)
    assert first != Identity.from_claims(claims(exp=now + 10, iat=1, role={"admin": False}))


def test_identity_refuses_wrongly_typed_standard_claims() -> None:
    with pytest.raises(AuthError, match="'email' has the wrong type"):
        Identity.from_claims(claims(email=42))


def test_dev_token_round_trips() -> None:
    token = make_dev_token(SECRET, "dev-user", issuer=ISSUER, audience=AUDIENCE, name="Dev", email="d@example.com")
    identity = hs(issuer=ISSUER, audience=AUDIENCE).verify(token)
    assert identity.token_identifier == f"{ISSUER}|dev-user"
    assert identity.name == "Dev" and identity.email == "d@example.com"
    expired = make_dev_token(SECRET, "dev-user", issuer=ISSUER, ttl_s=-60)
    with pytest.raises(AuthError, match="Token expired"):
        hs().verify(expired)


# ---------------------------------------------------------------------------------------------- admin keys


def test_admin_key_comparison() -> None:
    authenticator = Authenticator(AuthConfig(admin_key="s3cret-admin-key"))
    assert authenticator.verify_admin_key("s3cret-admin-key")
    assert not authenticator.verify_admin_key("s3cret-admin-kez")
    assert not authenticator.verify_admin_key("")
    assert not Authenticator(AuthConfig()).verify_admin_key("")
    assert not Authenticator(AuthConfig()).verify_admin_key("anything")


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("Bearer abc.def.ghi", ("bearer", "abc.def.ghi")),
        ("bearer   abc.def.ghi ", ("bearer", "abc.def.ghi")),
        ("Convex prod:key|123", ("admin", "prod:key|123")),
        ("CONVEX key", ("admin", "key")),
        ("Basic dXNlcjpwdw==", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_authorization(header: str | None, parsed: tuple[str, str] | None) -> None:
    assert parse_authorization(header) == parsed


def test_module_declares_its_surface() -> None:
    for name in auth.__all__:
        assert hasattr(auth, name), name
