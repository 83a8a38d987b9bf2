"""Regressions of the sync session found on main, each through a real socket against the real server:
identity captured per request, read-your-writes across an Authenticate, versions that never wedge, the
in-flight cap, query-set protocol errors, and a closed session freed by reference counting alone.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
import websockets

from tests.support import testing_app
from tests.support.server import RippleServer
from tests.support.ws import SyncClient, ts_of


def _mutation(request_id: int, path: str, args: dict[str, Any] | None = None, kind: str = "Mutation") -> dict[str, Any]:
    return {"type": kind, "requestId": request_id, "udfPath": path, "args": [args or {}]}


def _authenticate(token: str, base: int) -> dict[str, Any]:
    return {"type": "Authenticate", "tokenType": "User", "value": token, "baseVersion": base}


def _response(request_id: int, kind: str = "Mutation") -> Any:
    return lambda m: m["type"] == f"{kind}Response" and m["requestId"] == request_id


async def test_queued_mutation_runs_as_whoever_sent_it(ripple: RippleServer) -> None:
    """Finding 2: Mutation(alice) queued behind a slow one, then Authenticate(bob): it runs as alice."""
    gate = testing_app.GATES["f2"] = asyncio.Event()
    client = await SyncClient.connect(ripple.ws_url)
    await client.authenticate(ripple.token("alice"))
    await client.send(_mutation(0, "testing:gated", {"name": "f2"}))
    await client.send(_mutation(1, "testing:whoamiMutation"))
    await client.send(_mutation(2, "testing:viaWhoami", kind="Action"))
    confirmed = await client.authenticate(ripple.token("bob"))
    assert confirmed["endVersion"]["identity"] == 2
    gate.set()
    assert (await client.expect(_response(1)))["result"] == "alice"
    assert (await client.expect(_response(2, "Action")))["result"] == "alice"
    assert (await client.mutation("testing:whoamiMutation", request_id=3))["result"] == "bob"
    await client.close()


async def test_authenticate_during_a_mutation_keeps_read_your_writes(ripple: RippleServer) -> None:
    """Finding 3: an Authenticate that lands while the hub's round for a mutation's commit runs must not let the
    covering Transition go out with the query's old value (the query takes 0.3 s, so the round stays open)."""
    client = await SyncClient.connect(ripple.ws_url)
    qid = await client.subscribe("testing:slowCount", {"twitchId": "r", "delayS": 0.3})
    assert client.results[qid] == -1
    await client.send(_mutation(0, "testing:setProgress", {"twitchId": "r", "progress": 5}))
    response = await client.expect(_response(0))
    await client.send(_authenticate(ripple.token("bob"), 0))
    await client.expect(lambda m: m["type"] == "Transition" and ts_of(m["endVersion"]["ts"]) >= ts_of(response["ts"]))
    assert client.results[qid] == 5  # what the official client shows when the mutation's promise resolves
    await client.expect(lambda m: m["type"] == "Transition" and m["endVersion"]["identity"] == 1)
    assert client.results[qid] == 5
    await client.close()


async def _still_advances(client: SyncClient, ripple: RippleServer, twitch_id: str) -> None:
    """A new query's Transition arrives, and a write reaches it."""
    qid = await client.subscribe("testing:count", {"twitchId": twitch_id})
    assert client.results[qid] == -1
    await client.mutation("testing:setProgress", {"twitchId": twitch_id, "progress": 7})
    assert client.results[qid] == 7


async def test_authenticate_right_after_modify_query_set_does_not_wedge(ripple: RippleServer) -> None:
    """Finding 6: a token refresh sent right after a ModifyQuerySet (its pending version waited on a replaced
    token for good)."""
    client = await SyncClient.connect(ripple.ws_url)
    first = await client.subscribe("testing:whoami", wait=False)
    await client.send(_authenticate(ripple.token("alice"), 0))
    await client.expect(
        lambda m: m["type"] == "Transition" and m["endVersion"]["querySet"] == 1 and m["endVersion"]["identity"] == 1
    )
    assert client.results[first]["subject"] == "alice"
    await _still_advances(client, ripple, "a6")
    await client.close()


async def test_add_and_remove_of_one_id_in_one_message(ripple: RippleServer) -> None:
    """Finding 6: Add then Remove of one queryId in one ModifyQuerySet (and Remove then Add, a replacement)."""
    client = await SyncClient.connect(ripple.ws_url)
    add = {"type": "Add", "queryId": 0, "udfPath": "testing:count", "args": [{"twitchId": "x"}]}
    await client.modify([add, {"type": "Remove", "queryId": 0}])
    assert client.version["querySet"] == 1 and 0 not in client.results
    await client.modify([add])
    replaced = {"type": "Add", "queryId": 0, "udfPath": "testing:count", "args": [{"twitchId": "y"}]}
    await client.modify([{"type": "Remove", "queryId": 0}, replaced])
    assert client.version["querySet"] == 3 and client.results[0] == -1
    client.next_query_id = 1
    await _still_advances(client, ripple, "b6")
    await client.close()


@pytest.mark.parametrize(
    ("modifications", "reason"),
    [
        # The same queryId twice in one message (finding 6), then one already in the set, then an unknown one.
        ([{"type": "Add", "queryId": 5}, {"type": "Add", "queryId": 5}], "adds queryId 5, which is already"),
        ([{"type": "Add", "queryId": 0}], "adds queryId 0, which is already"),
        ([{"type": "Remove", "queryId": 9}], "removes queryId 9, which is not in the query set"),
    ],
)
async def test_query_set_protocol_errors_are_fatal_with_a_reason(
    ripple: RippleServer, modifications: list[dict[str, Any]], reason: str
) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    await client.subscribe("testing:count", {"twitchId": "z"})
    for mod in modifications:
        if mod["type"] == "Add":
            mod.update(udfPath="testing:count", args=[{"twitchId": "z"}])
    await client.modify(modifications, wait=False)
    error = await client.expect(lambda m: m["type"] == "FatalError")
    assert reason in error["error"], error
    with pytest.raises(websockets.ConnectionClosed):
        await client.expect(lambda m: False, timeout_s=5)
    assert client.version["querySet"] == 1


async def test_in_flight_requests_are_capped_per_socket(ripple: RippleServer) -> None:
    """1,000 mutations and actions in flight at most; the next one gets an error naming the limit, and the
    socket goes on."""
    gate = testing_app.GATES["cap"] = asyncio.Event()
    client = await SyncClient.connect(ripple.ws_url)
    await client.send(_mutation(0, "testing:gated", {"name": "cap"}))
    for n in range(1, 1000):
        await client.send(_mutation(n, "testing:whoamiMutation"))
    await client.send(_mutation(1000, "testing:whoamiMutation"))
    await client.send(_mutation(1001, "testing:viaWhoami", kind="Action"))
    for request_id, kind in ((1000, "Mutation"), (1001, "Action")):
        refused = await client.expect(_response(request_id, kind))
        assert refused["success"] is False and "the limit is 1000" in refused["result"], refused
    gate.set()
    for n in range(1000):
        assert (await client.expect(_response(n), timeout_s=60))["success"]
    assert (await client.mutation("testing:whoamiMutation", request_id=2000))["success"]
    await client.close()


async def test_closed_session_is_freed_by_reference_counting(ripple: RippleServer) -> None:
    """Finding 8: no reference cycle is left behind by a closed session (thousands of them between full
    collections would otherwise pile up)."""
    client = await SyncClient.connect(ripple.ws_url)
    await client.authenticate(ripple.token("alice"))  # an expiry timer
    qid = await client.subscribe("testing:count", {"twitchId": "m"})
    await client.mutation("testing:setProgress", {"twitchId": "m", "progress": 1})
    assert client.results[qid] == 1
    (session,) = ripple.services.sessions
    ref = weakref.ref(session)
    del session
    gc.collect()
    gc.disable()
    try:
        await client.close()
        for _ in range(200):
            if ref() is None:
                break
            await asyncio.sleep(0.025)
        alive = ref()
        if alive is not None:
            referrers = [type(r).__name__ + ": " + repr(r)[:200] for r in gc.get_referrers(alive)]
            del alive
            pytest.fail("the closed session is still referenced by:\n" + "\n".join(referrers))
    finally:
        gc.enable()
    assert ripple.services.hub.subscription_count == 0


async def test_a_session_task_that_dies_closes_its_socket_and_is_logged(
    ripple: RippleServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a session's mutation worker (injected here) must not leave its requests unanswered for good: the
    socket closes with 1011 so the client reconnects and resends, and the log says which session and why."""
    client = await SyncClient.connect(ripple.ws_url)
    await client.subscribe("testing:count", {"twitchId": "x"})
    (session,) = ripple.services.sessions

    async def broken() -> None:
        raise RuntimeError("injected bug in the mutation worker")

    session._run_mutations = broken  # type: ignore[method-assign]
    await client.send({"type": "Mutation", "requestId": 0, "udfPath": "testing:increment", "args": [{"twitchId": "x"}]})
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.expect(lambda m: False, timeout_s=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert "injected bug in the mutation worker" in caplog.text and client.session_id in caplog.text
