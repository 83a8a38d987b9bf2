"""The HTTP function API over real sockets: Convex's envelope, value encoding, validation, visibility and auth."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import asyncpg
import httpx
import jwt
import pytest

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.server import ADMIN_KEY, ISSUER, JWT_SECRET, RippleServer
from tests.support.ws import SyncClient

VIDEO = {"table": "videos", "doc": {"twitchId": "a", "title": "A", "status": "Queued"}}


async def test_success_and_error_envelopes_are_http_200(ripple: RippleServer) -> None:
    r = await ripple.http("mutation", "testing:insert", [VIDEO])  # the JS client's one-element array
    assert r.status_code == 200 and r.json()["status"] == "success"
    vid = r.json()["value"]
    r = await ripple.http("query", "testing:get", {"id": vid})  # the Python client's plain object
    assert r.json()["value"]["title"] == "A"

    r = await ripple.http("mutation", "testing:fail", {})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "error" and "boom" in body["errorMessage"]
    assert "errorData" not in body  # only a ConvexError carries errorData
    r = await ripple.http("mutation", "testing:fail", {"data": {"code": "NOPE", "n": 3}})
    assert r.json()["errorData"] == {"code": "NOPE", "n": 3}
    # The failed mutations left nothing behind.
    r = await ripple.http("query", "testing:videosByStatus", {"status": "Queued"})
    assert [d["twitchId"] for d in r.json()["value"]] == ["a"]


async def test_convex_value_encoding_both_ways(ripple: RippleServer) -> None:
    vid = (await ripple.http("mutation", "testing:insert", VIDEO)).json()["value"]
    nan = {"$float": base64.b64encode(b"\x00\x00\x00\x00\x00\x00\xf8\x7f").decode()}
    r = await ripple.http("mutation", "testing:patch", {"id": vid, "fields": {"progressPercentage": nan}})
    assert r.json()["status"] == "success", r.json()
    doc = (await ripple.http("query", "testing:get", {"id": vid})).json()["value"]
    assert doc["progressPercentage"] == nan  # NaN never travels as a bare JSON NaN
    clean = (await ripple.http("query", "testing:get", {"id": vid}, fmt="json")).json()["value"]
    assert clean["progressPercentage"] == "NaN"
    r = await ripple.http(
        "mutation", "testing:patch", {"id": vid, "fields": {"progressPercentage": {"$float": "AQ=="}}}
    )
    assert r.status_code == 400 and r.json()["code"] == "BadRequest"


async def test_argument_validation_and_unknown_functions(ripple: RippleServer) -> None:
    vid = (await ripple.http("mutation", "testing:insert", VIDEO)).json()["value"]
    ok = await ripple.http("query", "testing:typed", {"videoId": vid, "session": {"kind": "planner", "plan": "p"}})
    assert ok.json()["value"] == {"videoId": vid, "kind": "planner", "note": None}

    async def error(args: dict) -> str:
        body = (await ripple.http("query", "testing:typed", args)).json()
        assert body["status"] == "error", body
        return body["errorMessage"]

    assert 'missing required argument "videoId"' in await error({"session": {"kind": "planner", "plan": "p"}})
    assert 'unexpected argument "extra"' in await error(
        {"videoId": vid, "session": {"kind": "planner", "plan": "p"}, "extra": 1}
    )
    wf_id = "0" * 28 + f"{ripple.services.database.catalog.table('workflows').number:04x}"
    import hashlib

    wf_id += hashlib.md5(wf_id.encode()).hexdigest()[:4]
    assert 'must be Id("videos"), got an id of table "workflows"' in await error(
        {"videoId": wf_id, "session": {"kind": "planner", "plan": "p"}}
    )
    assert "not a document id" in await error({"videoId": "junk", "session": {"kind": "planner", "plan": "p"}})
    assert "session" in await error({"videoId": vid, "session": {"kind": "coder", "code": "x"}})  # missing language

    body = (await ripple.http("query", "nowhere:fn", {})).json()
    assert body == {
        "status": "error",
        "errorMessage": "Could not find public function for 'nowhere:fn'.",
        "logLines": [],
    }
    body = (await ripple.http("query", "testing:insert", VIDEO)).json()
    assert "is a mutation, not a query" in body["errorMessage"]


async def test_wire_names_are_canonicalised(ripple: RippleServer) -> None:
    for path in ("testing:videosByStatus", "testing.js:videosByStatus"):
        body = (await ripple.http("query", path, {"status": "Queued"})).json()
        assert body["status"] == "success", (path, body)


async def test_internal_functions_are_never_reachable_from_clients(ripple: RippleServer) -> None:
    for kind in ("query", "mutation", "action", "function"):
        for path in ("testing:secret", "testing:internalInsert"):
            body = (await ripple.http(kind, path, {"twitchId": "x"} if "Insert" in path else {})).json()
            assert body["errorMessage"] == f"Could not find public function for '{path}'.", body
    # ...but an action reaches them through ctx.run_*.
    body = (await ripple.http("action", "testing:viaAction", {"twitchId": "z"})).json()
    assert body["value"]["secret"] == "internal"


def _token(**claims: object) -> str:
    now = int(time.time())
    payload = {"sub": "alice", "iss": ISSUER, "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


async def test_jwt_identity_accepted_and_refused(ripple: RippleServer) -> None:
    body = (await ripple.http("query", "testing:whoami", {}, token=_token(name="Alice", given_name="Al"))).json()
    assert body["value"]["tokenIdentifier"] == f"{ISSUER}|alice"
    assert body["value"]["givenName"] == "Al" and body["value"]["name"] == "Alice"
    assert (await ripple.http("query", "testing:whoami", {})).json()["value"] is None

    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "eve", "iss": ISSUER, "exp": 2**40}).encode())
    unsigned = f"{header}.{claims.rstrip(b'=').decode()}."
    bad = {
        "bad signature": jwt.encode(
            {"sub": "alice", "iss": ISSUER, "exp": 2**40}, "another-secret-0123456789abcdef-012345", algorithm="HS256"
        ),
        "expired": _token(exp=int(time.time()) - 3600),
        "wrong issuer": _token(iss="https://evil.example"),
        "alg none": unsigned,
    }
    for what, token in bad.items():
        r = await ripple.http("query", "testing:whoami", {}, token=token)
        assert r.status_code == 401 and r.json()["code"] == "Unauthenticated", (what, r.text)
    r = await ripple.http("query", "testing:whoami", {}, admin=True)
    assert r.status_code == 200


async def test_malformed_requests_get_clear_errors(ripple: RippleServer) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=ripple.url) as client:
        r = await client.post("/api/query", content=b"{not json")
        assert r.status_code == 400 and "must be JSON" in r.json()["message"]
        r = await client.post("/api/query", json={"args": {}})
        assert r.status_code == 400 and '"path"' in r.json()["message"]
        r = await client.post("/api/query", json={"path": "testing:get", "args": [1, 2]})
        assert r.status_code == 400
        big = "x" * (ripple.settings.max_message_bytes + 1)
        r = await client.post("/api/query", json={"path": "testing:get", "args": {"id": big}})
        assert r.status_code == 413
        r = await client.options(
            "/api/query", headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
        )
        assert r.headers["access-control-allow-origin"] == "*"  # any origin, without credentials (RIPPLE_CORS_*)
        assert (await client.get("/health")).json()["status"] == "ok"


async def test_official_python_http_client(ripple: RippleServer) -> None:
    """PyPI `convex`'s ConvexHttpClient (plain requests, so it runs in a thread) calls a query and a mutation."""
    from convex import ConvexError
    from convex.http_client import ConvexHttpClient

    def scenario() -> tuple[object, object]:
        client = ConvexHttpClient(ripple.url)
        created = client.mutation("testing:insert", VIDEO)
        found = client.query("testing:videosByStatus", {"status": "Queued"})
        with pytest.raises(ConvexError) as info:
            client.mutation("testing:fail", {"data": {"code": "E1"}})
        assert info.value.data == {"code": "E1"}
        client.set_auth(_token())
        who = client.query("testing:whoami")
        return created, (found, who)

    created, (found, who) = await asyncio.to_thread(scenario)
    assert [d["_id"] for d in found] == [created]
    assert who["subject"] == "alice"


# At COMMIT a video "slow-commit" takes 0.6 s (a deferred constraint trigger); in the handler, inserting a video
# "slow-handler" takes as long (a plain row trigger, which runs inside the insert call).
_SLOW_SQL = """
CREATE FUNCTION slow_video() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.twitch_id = TG_ARGV[0] THEN
        PERFORM pg_sleep(0.6);
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON videos DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION slow_video('slow-commit');
CREATE TRIGGER slow_handler AFTER INSERT ON videos FOR EACH ROW EXECUTE FUNCTION slow_video('slow-handler');
"""


@pytest.mark.parametrize("ripple", [{"mutation_timeout_s": 0.3}], indirect=True)
async def test_the_mutation_time_limit_covers_the_handler_not_the_commit(ripple: RippleServer) -> None:
    """A COMMIT slower than the limit still reports the success it is (the row exists); a handler slower than the
    limit fails and leaves nothing."""
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        await conn.execute(_SLOW_SQL)
        doc = {"table": "videos", "doc": {"twitchId": "slow-commit", "title": "T", "status": "Queued"}}
        r = (await ripple.http("mutation", "testing:insert", doc)).json()
        assert r["status"] == "success", r
        assert await conn.fetchval("SELECT _id FROM videos WHERE twitch_id = 'slow-commit'") == r["value"]

        doc = {"table": "videos", "doc": {"twitchId": "slow-handler", "title": "T", "status": "Queued"}}
        r = (await ripple.http("mutation", "testing:insert", doc)).json()
        assert r["status"] == "error" and "testing:insert ran longer than 0.3 s" in r["errorMessage"], r
        assert await conn.fetchval("SELECT count(*) FROM videos WHERE twitch_id = 'slow-handler'") == 0
    finally:
        await conn.close()


async def test_an_admin_reaches_internal_functions_over_http_and_sync(ripple: RippleServer) -> None:
    """As with Convex's admin key (`npx convex run`, the dashboard): the admin console runs internal functions."""
    body = (await ripple.http("query", "testing:secret", {}, admin=True)).json()
    assert body == {"status": "success", "value": "internal", "logLines": []}, body
    body = (await ripple.http("mutation", "testing:internalInsert", {"twitchId": "adm"}, admin=True)).json()
    assert body["status"] == "success", body

    admin, user = await SyncClient.connect(ripple.ws_url), await SyncClient.connect(ripple.ws_url)
    await admin.authenticate(ADMIN_KEY, token_type="Admin")
    qid = await admin.subscribe("testing:secret", {})
    assert admin.results[qid] == "internal"
    response = await admin.mutation("testing:internalInsert", {"twitchId": "adm2"})
    assert response["success"], response
    # The same subscription from a non-admin socket is refused alone.
    await user.send(
        {
            "type": "ModifyQuerySet",
            "baseVersion": 0,
            "newVersion": 1,
            "modifications": [{"type": "Add", "queryId": 0, "udfPath": "testing:secret", "args": [{}]}],
        }
    )
    failed = await user.expect(lambda m: m["type"] == "Transition" and m["modifications"])
    assert failed["modifications"][0]["type"] == "QueryFailed"
    assert "Could not find public function" in failed["modifications"][0]["errorMessage"]
    await admin.close()
    await user.close()


async def test_pages_and_the_vendored_client_are_served_gzipped(ripple: RippleServer) -> None:
    async with httpx.AsyncClient(base_url=ripple.url) as http:
        bundle = await http.get("/_static/convex/browser.bundle.js", headers={"Accept-Encoding": "gzip"})
        assert bundle.status_code == 200 and bundle.headers["content-encoding"] == "gzip"
        assert bundle.num_bytes_downloaded < 60_000 and "ConvexClient" in bundle.text
        plain = await http.get("/_static/convex/browser.bundle.js", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers and len(plain.content) > 150_000
        console = await http.get("/_admin/")
        assert console.status_code == 200 and "Ripple admin console" in console.text
        api = await http.post(
            "/api/query", json={"path": "testing:secret", "args": {}}, headers={"Accept-Encoding": "gzip"}
        )
        assert "content-encoding" not in api.headers  # the API's JSON is not compressed
