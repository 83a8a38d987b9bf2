"""The console's `_system/data:*` functions over HTTP with the admin key (refused without it), and an admin acting
as a user (Convex's `setAdminAuth(key, actingAs)`) over HTTP and sync."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.server import ADMIN_KEY, ISSUER, RippleServer
from tests.support.ws import SyncClient


def _video(twitch_id: str, status: str = "Queued") -> dict[str, Any]:
    return {"twitchId": twitch_id, "title": f"title {twitch_id}", "status": status}


async def _admin(ripple: RippleServer, kind: str, path: str, args: dict[str, Any]) -> Any:
    r = await ripple.http(kind, path, args, admin=True)
    body = r.json()
    assert body["status"] == "success", body
    return body["value"]


async def _as(ripple: RippleServer, credential: str, kind: str, path: str, args: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=ripple.url, timeout=30) as client:
        return await client.post(
            f"/api/{kind}", json={"path": path, "args": args}, headers={"Authorization": f"Convex {credential}"}
        )


async def test_system_functions_are_refused_without_the_admin_key(ripple: RippleServer) -> None:
    for token in (None, ripple.token("alice")):
        r = await ripple.http("query", "_system/data:tables", {}, token=token)
        assert r.json()["status"] == "error" and "Could not find public function" in r.json()["errorMessage"]
    r = await _as(ripple, "not-the-key", "query", "_system/data:tables", {})
    assert r.status_code == 401 and "admin key is not valid" in r.json()["message"]


async def test_tables_count_rows_and_list_indexes(ripple: RippleServer) -> None:
    for n in range(3):
        await _admin(ripple, "mutation", "testing:insert", {"table": "videos", "doc": _video(f"v{n}")})
    tables = {t["name"]: t for t in await _admin(ripple, "query", "_system/data:tables", {})}
    assert tables["videos"]["count"] == 3 and tables["videos"]["countCapped"] is False
    assert tables["_storage"]["system"] is True and tables["videos"]["system"] is False
    assert not any(name.startswith("_ripple") for name in tables)
    indexes = {i["name"]: i["fields"] for i in tables["videos"]["indexes"]}
    assert indexes["by_creation_time"] == ["_creationTime", "_id"]
    assert "twitchId" in tables["videos"]["fields"]


async def test_a_count_past_the_cap_says_so(ripple: RippleServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.admin.data

    monkeypatch.setattr(server.admin.data, "COUNT_CAP", 2)
    for n in range(2):
        await _admin(ripple, "mutation", "testing:insert", {"table": "videos", "doc": _video(f"v{n}")})
    tables = {t["name"]: t for t in await _admin(ripple, "query", "_system/data:tables", {})}
    assert (tables["videos"]["count"], tables["videos"]["countCapped"]) == (2, False)  # exactly the cap: exact
    await _admin(ripple, "mutation", "testing:insert", {"table": "videos", "doc": _video("v2")})
    tables = {t["name"]: t for t in await _admin(ripple, "query", "_system/data:tables", {})}
    assert (tables["videos"]["count"], tables["videos"]["countCapped"]) == (2, True)


async def test_documents_paginate_sort_and_filter(ripple: RippleServer) -> None:
    for n, status in enumerate(["Queued", "Done", "Queued", "Queued"]):
        await _admin(ripple, "mutation", "testing:insert", {"table": "videos", "doc": _video(f"v{n}", status)})
    args: dict[str, Any] = {"table": "videos", "paginationOpts": {"numItems": 2, "cursor": None}, "order": "asc"}
    first = await _admin(ripple, "query", "_system/data:documents", args)
    assert [d["twitchId"] for d in first["page"]] == ["v0", "v1"] and not first["isDone"]
    args["paginationOpts"] = {"numItems": 2, "cursor": first["continueCursor"]}
    second = await _admin(ripple, "query", "_system/data:documents", args)
    assert [d["twitchId"] for d in second["page"]] == ["v2", "v3"]
    newest = await _admin(
        ripple,
        "query",
        "_system/data:documents",
        {"table": "videos", "paginationOpts": {"numItems": 10, "cursor": None}, "order": "desc"},
    )
    assert [d["twitchId"] for d in newest["page"]] == ["v3", "v2", "v1", "v0"]
    filtered = await _admin(
        ripple,
        "query",
        "_system/data:documents",
        {
            "table": "videos",
            "paginationOpts": {"numItems": 10, "cursor": None},
            "order": "asc",
            "filterField": "status",
            "filterValue": "Queued",
        },
    )
    assert [d["twitchId"] for d in filtered["page"]] == ["v0", "v2", "v3"]
    r = await ripple.http(
        "query",
        "_system/data:documents",
        {"table": "videos", "paginationOpts": {"numItems": 1, "cursor": None}, "filterField": "nope"},
        admin=True,
    )
    assert 'has no field "nope"' in r.json()["errorMessage"]


async def test_patch_insert_delete_commit_and_reach_a_subscriber(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    try:
        await client.subscribe("testing:videosByStatus", {"status": "Queued"})
        doc_id = await _admin(ripple, "mutation", "_system/data:insert", {"table": "videos", "document": _video("a")})
        seen = await client.expect(
            lambda m: m["type"] == "Transition" and any(x.get("value") for x in m["modifications"])
        )
        assert seen["modifications"][0]["value"][0]["_id"] == doc_id
        await _admin(ripple, "mutation", "_system/data:patch", {"id": doc_id, "fields": {"title": "edited"}})
        seen = await client.expect(
            lambda m: m["type"] == "Transition" and any(x.get("value") for x in m["modifications"])
        )
        assert seen["modifications"][0]["value"][0]["title"] == "edited"
        await _admin(ripple, "mutation", "_system/data:delete", {"id": doc_id})
        await client.expect(
            lambda m: m["type"] == "Transition" and any(x.get("value") == [] for x in m["modifications"])
        )
    finally:
        await client.close()
    r = await ripple.http("mutation", "_system/data:patch", {"id": doc_id, "fields": {"title": "x"}}, admin=True)
    assert "does not exist" in r.json()["errorMessage"]
    r = await ripple.http(
        "mutation", "_system/data:insert", {"table": "videos", "document": {"twitchId": 5}}, admin=True
    )
    assert r.json()["status"] == "error" and "twitchId" in r.json()["errorMessage"]


async def test_functions_list_kind_visibility_and_schema_without_system_ones(ripple: RippleServer) -> None:
    async with httpx.AsyncClient(base_url=ripple.url) as http:
        refused = await http.get("/api/admin/functions")
        assert refused.status_code == 401 and "admin key" in refused.json()["message"]
        reply = await http.get("/api/admin/functions", headers={"Authorization": f"Convex {ADMIN_KEY}"})
    listed = {f["path"]: f for f in reply.json()["functions"]}
    assert not any(path.startswith("_system/") for path in listed)
    secret = listed["testing:secret"]
    assert (secret["kind"], secret["visibility"]) == ("query", "internal")
    schema = listed["testing:insert"]["argsSchema"]
    assert set(schema["required"]) == {"table", "doc"}
    assert listed["testing:insert"]["kind"] == "mutation"
    paged = listed["testing:videosPage"]["argsSchema"]
    assert "paginationOpts" in paged["properties"]


def _acting(attributes: dict[str, Any]) -> str:
    """ConvexHttpClient's form: `<key>:<base64 of the identity JSON>`."""
    return f"{ADMIN_KEY}:" + base64.b64encode(json.dumps(attributes).encode()).decode()


async def test_an_admin_acts_as_a_user_over_http(ripple: RippleServer) -> None:
    r = await _as(ripple, _acting({"subject": "alice", "name": "Alice"}), "query", "testing:whoami", {})
    who = r.json()["value"]
    assert who["tokenIdentifier"] == f"{ISSUER}|alice" and who["subject"] == "alice" and who["name"] == "Alice"
    # Still admin: internal functions stay reachable.
    r = await _as(ripple, _acting({"subject": "alice"}), "query", "testing:secret", {})
    assert r.json()["status"] == "success"
    r = await _as(ripple, _acting({"tokenIdentifier": "x|y", "subject": "y"}), "query", "testing:whoami", {})
    assert r.json()["value"]["tokenIdentifier"] == "x|y"
    r = await _as(ripple, _acting({"name": "nobody"}), "query", "testing:whoami", {})
    assert r.status_code == 401 and '"subject"' in r.json()["message"]
    r = await _as(ripple, f"{ADMIN_KEY}:%%%", "query", "testing:whoami", {})
    assert r.status_code == 401 and "base64" in r.json()["message"]
    r = await _as(ripple, "wrong:" + _acting({"subject": "a"}).partition(":")[2], "query", "testing:whoami", {})
    assert r.status_code == 401 and "admin key is not valid" in r.json()["message"]


async def test_an_admin_acting_as_the_owner_passes_an_ownership_check(ripple: RippleServer) -> None:
    project = await ripple.call("projectRedesign:createRedesignProject", {"prompt": "Tokyo"}, user="alice")
    r = await _as(ripple, _acting({"subject": "alice"}), "query", "projectRedesign:getProject", {"projectId": project})
    assert r.json()["value"]["_id"] == project
    r = await _as(ripple, _acting({"subject": "bob"}), "query", "projectRedesign:getProject", {"projectId": project})
    assert r.json()["status"] == "success" and r.json()["value"] is None


async def test_an_admin_acts_as_a_user_over_sync(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    try:
        await client.send(
            {
                "type": "Authenticate",
                "tokenType": "Admin",
                "value": ADMIN_KEY,
                "baseVersion": 0,
                "impersonating": {"subject": "carol", "email": "c@example.com"},
            }
        )
        await client.expect(lambda m: m["type"] == "Transition" and m["endVersion"]["identity"] == 1)
        await client.subscribe("testing:whoami", {}, wait=False)
        who = await client.expect(lambda m: m["type"] == "Transition" and m["modifications"])
        identity = who["modifications"][0]["value"]
        assert identity["tokenIdentifier"] == f"{ISSUER}|carol" and identity["email"] == "c@example.com"
        await client.subscribe("testing:secret", {}, wait=False)  # still admin: internal functions reachable
        secret = await client.expect(lambda m: m["type"] == "Transition" and m["modifications"])
        assert secret["modifications"][0]["value"] == "internal"
    finally:
        await client.close()


def test_generated_types_leave_out_system_functions() -> None:
    import server.admin.data  # noqa: F401  (registers the _system/ functions)
    from server.codegen import api_dts
    from server.database.catalog import Catalog
    from server.functions.registry import registry

    system = [spec for spec in registry if spec.path.startswith("_system/")]
    assert system
    text = api_dts(system, Catalog())
    assert "_system" not in text and "export declare const internal: {\n}" in text
