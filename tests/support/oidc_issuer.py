"""A real OIDC issuer on loopback for tests: discovery document, JWKS, keys that can be rotated while it runs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


@dataclass
class SigningKey:
    kid: str
    algorithm: str  # RS256 or ES256
    private: Any

    @classmethod
    def new(cls, kid: str, algorithm: str = "RS256") -> SigningKey:
        if algorithm == "RS256":
            return cls(kid, algorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return cls(kid, algorithm, ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        to_jwk = RSAAlgorithm.to_jwk if self.algorithm == "RS256" else ECAlgorithm.to_jwk
        public: dict[str, Any] = to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "alg": self.algorithm}


@dataclass
class Issuer:
    """`domain` is its URL (what tokens put in `iss`); `published` the keys its JWKS serves now (rotate by
    assigning); `hits` every path requested; `broken` makes discovery answer 500."""

    domain: str
    published: list[SigningKey]
    hits: list[str] = field(default_factory=list)
    broken: bool = False

    def token(self, key: SigningKey, sub: str = "user-1", *, audience: str | None = "convex", **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"sub": sub, "iss": self.domain, "iat": now, "exp": now + 600, **claims}
        if audience is not None:
            payload["aud"] = audience
        return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid})

    def documents(self, path: str) -> tuple[int, bytes]:
        if path == "/.well-known/openid-configuration" and not self.broken:
            document = {
                "issuer": self.domain,
                "jwks_uri": f"{self.domain}/keys",
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
            return 200, json.dumps(document).encode()
        if path == "/keys" and not self.broken:
            return 200, json.dumps({"keys": [key.jwk() for key in self.published]}).encode()
        return 500 if self.broken else 404, b'{"error": "nope"}'


@contextmanager
def running_issuer(*keys: SigningKey, path_prefix: str = "") -> Iterator[Issuer]:
    """An issuer served by http.server on 127.0.0.1 (its own thread) until the block ends."""
    issuer: Issuer | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert issuer is not None
            issuer.hits.append(self.path)
            status, body = issuer.documents(self.path.removeprefix(path_prefix))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer = Issuer(f"http://127.0.0.1:{server.server_address[1]}{path_prefix}", list(keys))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
