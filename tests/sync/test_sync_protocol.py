"""The sync protocol over a real WebSocket, message by message. `SyncClient` asserts version continuity on
every Transition it receives, so every test here also checks that invariant.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
import websockets

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.server import RippleServer
from tests.support.ws import SyncClient, ts_of

VIDEO = {"table": "videos", "doc": {"twitchId": "a", "title": "A", "status": "Queued"}}


async def test_subscribe_update_remove(ripple: RippleServer) -> None:
    watcher = await SyncClient.connect(ripple.ws_url)
    writer = await SyncClient.connect(ripple.ws_url)
    qid = await watcher.subscribe("testing:videosByStatus", {"status": "Queued"})
    assert watcher.results[qid] == [] and watcher.version["querySet"] == 1

    response = await writer.mutation("testing:insert", VIDEO)
    assert response["success"] and isinstance(response["result"], str)
    update = await watcher.expect(lambda m: m["type"] == "Transition" and m["modifications"])
    assert [d["twitchId"] for d in watcher.results[qid]] == ["a"]
    assert ts_of(update["endVersion"]["ts"]) >= ts_of(response["ts"])

    # A write the query did not read sends nothing.
    await writer.mutation("testing:insert", {"table": "videos", "doc": {**VIDEO["doc"], "status": "Failed"}})
    with pytest.raises(TimeoutError):
        await watcher.expect(lambda m: m["type"] == "Transition", timeout_s=0.5)

    await watcher.unsubscribe(qid)
    assert qid not in watcher.results and watcher.version["querySet"] == 2
    assert ripple.services.hub.subscription_count == 0
    await watcher.close()
    await writer.close()


async def test_identical_subscriptions_share_one_instance(ripple: RippleServer) -> None:
    clients = [await SyncClient.connect(ripple.ws_url) for _ in range(5)]
    for client in clients:
        await client.subscribe("testing:videosByStatus", {"status": "Queued"})
        await client.subscribe("testing:videosByStatus", {"status": "Failed"})
    hub = ripple.services.hub
    assert hub.subscription_count == 10 and hub.instance_count == 2
    runs = ripple.services.metrics.reruns.labels("testing:videosByStatus")._value.get()
    writer = await SyncClient.connect(ripple.ws_url)
    await writer.mutation("testing:insert", VIDEO)
    for client in clients:
        await client.expect(lambda m: m["type"] == "Transition" and m["modifications"])
        assert len(client.results[0]) == 1
    assert (
        ripple.services.metrics.reruns.labels("testing:videosByStatus")._value.get() - runs == 1
    )  # one re-run served five sockets
    for client in clients:
        await client.close()


async def test_nothing_is_queried_while_nothing_changes(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    await client.subscribe("testing:videosByStatus", {"status": "Queued"})
    rounds = ripple.services.hub.rounds
    await asyncio.sleep(1.0)
    assert ripple.services.hub.rounds == rounds
    await client.close()


async def test_query_failures_and_convex_errors(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    plain = await client.subscribe("testing:boom")
    data = await client.subscribe("testing:boom", {"data": {"code": "E42"}})
    missing = await client.subscribe("nope:fn")
    bad_args = await client.subscribe("testing:videosByStatus", {"status": 5})
    assert "query failed" in client.errors[plain]["errorMessage"] and "errorData" not in client.errors[plain]
    assert client.errors[data]["errorData"] == {"code": "E42"}
    assert client.errors[missing]["errorMessage"] == "Could not find public function for 'nope:fn'."
    assert "status" in client.errors[bad_args]["errorMessage"]

    failed = await client.mutation("testing:fail", {})
    assert failed["success"] is False and "boom" in failed["result"] and "errorData" not in failed
    convex = await client.mutation("testing:fail", {"data": [1, "two"]})
    assert convex["errorData"] == [1, "two"]
    action = await client.mutation("testing:viaAction", {"twitchId": "q"}, kind="Action")
    assert action["success"] and action["result"]["secret"] == "internal" and "ts" not in action
    await client.close()


async def test_resent_mutation_is_applied_once(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    first = await client.mutation("testing:insert", VIDEO, request_id=3)
    again = await client.mutation("testing:insert", VIDEO, request_id=3)
    assert again["result"] == first["result"] and again["ts"] == first["ts"]
    # A new socket of the same session (a JS reconnect) resends it too.
    other = await SyncClient.connect(ripple.ws_url, connect=False)
    other.session_id = client.session_id
    await other.send(
        {"type": "Connect", "sessionId": client.session_id, "connectionCount": 1, "lastCloseReason": "x", "clientTs": 0}
    )
    third = await other.mutation("testing:insert", VIDEO, request_id=3)
    assert third["result"] == first["result"]
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM videos") == 1
    finally:
        await conn.close()
    await client.close()
    await other.close()


async def test_mutations_on_one_socket_run_in_order(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    qid = await client.subscribe("testing:count", {"twitchId": "c"})
    for n in range(10):
        await client.send(
            {
                "type": "Mutation",
                "requestId": n,
                "udfPath": "testing:setProgress",
                "args": [{"twitchId": "c", "progress": n}],
            }
        )
    responses = [
        await client.expect(lambda m, n=n: m["type"] == "MutationResponse" and m["requestId"] == n) for n in range(10)
    ]
    assert [ts_of(r["ts"]) for r in responses] == sorted(ts_of(r["ts"]) for r in responses)
    await client.expect(lambda m: m["type"] == "Transition" and client.results.get(qid) == 9)
    await client.close()


async def test_authenticate_reruns_queries_with_the_new_identity(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    qid = await client.subscribe("testing:whoami")
    assert client.results[qid] is None
    message = await client.authenticate(ripple.token("alice", name="Alice"))
    assert message["endVersion"]["identity"] == 1
    assert client.results[qid]["tokenIdentifier"].endswith("|alice")
    message = await client.authenticate(None)
    assert message["endVersion"]["identity"] == 2 and client.results[qid] is None

    bad = await client.authenticate("not.a.jwt")
    assert bad["type"] == "AuthError" and bad["authUpdateAttempted"] is True and bad["baseVersion"] == 2
    with pytest.raises(websockets.ConnectionClosed):
        await client.expect(lambda m: False, timeout_s=5)


async def test_authenticate_without_queries_still_confirms(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    message = await client.authenticate(ripple.token("bob"))
    assert message["type"] == "Transition" and message["modifications"] == []
    await client.close()


async def test_queries_that_read_auth_are_not_shared_across_users(ripple: RippleServer) -> None:
    alice, bob = await SyncClient.connect(ripple.ws_url), await SyncClient.connect(ripple.ws_url)
    await alice.authenticate(ripple.token("alice"))
    await bob.authenticate(ripple.token("bob"))
    qa, qb = await alice.subscribe("testing:whoami"), await bob.subscribe("testing:whoami")
    assert alice.results[qa]["subject"] == "alice" and bob.results[qb]["subject"] == "bob"
    # Queries that ignore auth are shared whoever asks.
    await alice.subscribe("testing:videosByStatus", {"status": "Queued"})
    await bob.subscribe("testing:videosByStatus", {"status": "Queued"})
    assert ripple.services.hub.instance_count == 3
    await alice.close()
    await bob.close()


async def test_protocol_errors_are_reported_and_others_go_on(ripple: RippleServer) -> None:
    bystander = await SyncClient.connect(ripple.ws_url)
    qid = await bystander.subscribe("testing:videosByStatus", {"status": "Queued"})

    client = await SyncClient.connect(ripple.ws_url)
    await client.ws.send("{not json")
    error = await client.expect(lambda m: m["type"] == "FatalError")
    assert "not JSON" in error["error"]
    await client.send({"type": "Mutation", "requestId": "x"})
    error = await client.expect(lambda m: m["type"] == "FatalError")
    assert "malformed Mutation" in error["error"]
    # The socket still works after a malformed frame.
    await client.subscribe("testing:videosByStatus", {"status": "Queued"})

    # A query-set version that skips is fatal for that socket only.
    await client.send({"type": "ModifyQuerySet", "baseVersion": 7, "newVersion": 8, "modifications": []})
    error = await client.expect(lambda m: m["type"] == "FatalError")
    assert "version" in error["error"]
    with pytest.raises(websockets.ConnectionClosed):
        await client.expect(lambda m: False, timeout_s=5)

    # An oversized frame closes only its own socket.
    huge = await SyncClient.connect(ripple.ws_url)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await huge.ws.send(
            json.dumps(
                {
                    "type": "Mutation",
                    "requestId": 0,
                    "udfPath": "testing:insert",
                    "args": [{"pad": "x" * (ripple.settings.max_message_bytes + 10)}],
                }
            )
        )
        await huge.expect(lambda m: False, timeout_s=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    # A session id that could not be stored with a mutation (it would end the commit's SQL text) is refused.
    async with websockets.connect(ripple.ws_url) as nul:
        await nul.send(json.dumps({"type": "Connect", "sessionId": "a\x00b", "connectionCount": 0}))
        error = json.loads(await asyncio.wait_for(nul.recv(), 5))
        assert error["type"] == "FatalError" and "sessionId" in error["error"], error

    writer = await SyncClient.connect(ripple.ws_url)
    await writer.mutation("testing:insert", VIDEO)
    await bystander.expect(lambda m: m["type"] == "Transition" and len(bystander.results[qid]) == 1)
    await bystander.close()
    await writer.close()


async def test_slow_client_gets_latest_state_coalesced(ripple: RippleServer) -> None:
    """A client that stops reading does not hold the hub back; when it reads again it gets the latest result
    in fewer Transitions than there were commits."""
    slow = await SyncClient.connect(ripple.ws_url, max_queue=1)
    qid = await slow.subscribe("testing:padded", {"twitchId": "p", "size": 1_000_000})
    slow.ws.transport.pause_reading()
    fast = await SyncClient.connect(ripple.ws_url)
    fq = await fast.subscribe("testing:count", {"twitchId": "p"})
    for n in range(1, 31):
        await fast.mutation("testing:setProgress", {"twitchId": "p", "progress": n})
    assert fast.results[fq] == 30
    before = len(slow.received)
    slow.ws.transport.resume_reading()
    await slow.expect(lambda m: m["type"] == "Transition" and slow.results[qid]["progress"] == 30, timeout_s=20)
    transitions = sum(1 for m in slow.received[before:] if m["type"] == "Transition")
    assert transitions < 30
    await slow.close()
    await fast.close()


@pytest.mark.parametrize("ripple", [{"slow_client_timeout_s": 1.0}], indirect=True)
async def test_client_too_far_behind_is_closed_with_a_reason(ripple: RippleServer) -> None:
    stuck = await SyncClient.connect(ripple.ws_url, max_queue=1)
    await stuck.subscribe("testing:padded", {"twitchId": "p", "size": 2_000_000})
    stuck.ws.transport.pause_reading()  # a client that stopped reading altogether
    fast = await SyncClient.connect(ripple.ws_url)
    for n in range(1, 16):
        await fast.mutation("testing:setProgress", {"twitchId": "p", "progress": n})
    await asyncio.sleep(2.5)
    stuck.ws.transport.resume_reading()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await stuck.expect(lambda m: False, timeout_s=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert "too slow" in closed.value.rcvd.reason
    await fast.mutation("testing:setProgress", {"twitchId": "p", "progress": 99})  # the server goes on
    await fast.close()


@pytest.mark.parametrize("ripple", [{"ping_interval_s": 0.4}], indirect=True)
async def test_heartbeat_ping(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    await client.expect(lambda m: m["type"] == "Ping", timeout_s=3)
    await client.close()


async def test_versioned_sync_path_and_double_slashes(ripple: RippleServer) -> None:
    for path in ("/api/1.48.0/sync", "//api/sync"):
        client = await SyncClient.connect(ripple.url.replace("http", "ws") + path)
        qid = await client.subscribe("testing:videosByStatus", {"status": "Queued"})
        assert client.results[qid] == []
        await client.close()


async def test_graceful_shutdown_closes_sockets_with_a_reason(fresh_dsn: str) -> None:
    from tests.support.server import run_server

    async with run_server(fresh_dsn) as server:
        client = await SyncClient.connect(server.ws_url)
        await client.subscribe("testing:videosByStatus", {"status": "Queued"})
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.expect(lambda m: False, timeout_s=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
    assert closed.value.rcvd.reason == "server shutting down; reconnect"
