"""Function logs, request ids and metrics on every call path: HTTP, sync socket, hub re-runs, the official client."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pytest

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from server.functions.calllog import MAX_LINE_CHARS, MAX_LINES
from server.log_tail import tail
from server.logs import JsonFormatter
from tests.clients.driver import ClientDriver
from tests.support.server import ADMIN_KEY, RippleServer
from tests.support.ws import SyncClient
from tests.test_metrics import value

UNCAUGHT = re.compile(r"^Uncaught KeyError: 'x' \(request ([0-9a-f]{12}); the server log has the traceback\)$")


def _records(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "request_id", None) == request_id]


def _call_record(caplog: pytest.LogCaptureFixture, request_id: str) -> logging.LogRecord:
    calls = [r for r in _records(caplog, request_id) if r.name == "ripple.functions" and hasattr(r, "outcome")]
    assert len(calls) == 1, [r.getMessage() for r in _records(caplog, request_id)]
    return calls[0]


async def test_uncaught_exception_is_logged_with_the_id_the_client_sees(
    ripple: RippleServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ripple.functions")
    body = (await ripple.http("mutation", "testing:buggy", {"key": "x"}, token=ripple.token("alice"))).json()
    match = UNCAUGHT.match(body["errorMessage"])
    assert body["status"] == "error" and match, body
    assert body["logLines"] == ["[LOG] 'looking up x'"]
    record = _call_record(caplog, match[1])
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "KeyError" in caplog.text and "testing_app.py" in caplog.text  # the traceback, down to the app's line
    fields = {k: getattr(record, k) for k in ("function", "kind", "transport", "caller", "outcome")}
    assert fields == {
        "function": "testing:buggy",
        "kind": "mutation",
        "transport": "http",
        "caller": "alice",
        "outcome": "uncaught",
    }
    assert record.duration_ms >= 0
    entry = json.loads(JsonFormatter().format(record))  # RIPPLE_LOG_FORMAT=json: the same, as fields
    assert entry["request_id"] == match[1] and entry["caller"] == "alice" and "KeyError" in entry["exception"]
    printed = [r.getMessage() for r in _records(caplog, match[1]) if "looking up x" in r.getMessage()]
    assert printed, "the printed line is in the server log, tagged with the request id"

    client = await SyncClient.connect(ripple.ws_url)
    response = await client.mutation("testing:buggy", {"key": "x"})
    match = UNCAUGHT.match(response["result"])
    assert not response["success"] and match, response
    assert response["logLines"] == ["[LOG] 'looking up x'"]
    assert _call_record(caplog, match[1]).transport == "websocket"
    qid = await client.subscribe("testing:buggyQuery", {"key": "x"})
    match = UNCAUGHT.match(client.errors[qid]["errorMessage"])
    assert match, client.errors[qid]
    record = _call_record(caplog, match[1])
    assert record.transport == "hub" and record.exc_info is not None and record.caller == "anonymous"
    await client.close()


async def test_database_errors_reach_clients_without_internals(
    ripple: RippleServer, caplog: pytest.LogCaptureFixture
) -> None:
    body = (await ripple.http("query", "testing:badStatement", {"text": "a"})).json()
    message = body["errorMessage"]
    match = re.fullmatch(
        r"Server error: the database refused this function's statement \(request ([0-9a-f]{12})\)", message
    )
    assert match, body
    record = _call_record(caplog, match[1])
    assert record.outcome == "database" and "0x00" in caplog.text  # the log has the driver's own words


async def test_log_lines_reach_the_calling_client_only(ripple: RippleServer) -> None:
    body = (await ripple.http("query", "testing:chattyCount", {"twitchId": "a", "tag": "h1"})).json()
    assert body == {"status": "success", "value": -1, "logLines": ["[LOG] 'h1 read a: -1'", "[INFO] 'h1 counted -1'"]}

    # Concurrent HTTP mutations whose lines interleave in time: each response has its own.
    bodies = await asyncio.gather(
        *(
            ripple.http("mutation", "testing:chattySet", {"twitchId": t, "progress": 1, "tag": t, "delayS": 0.2})
            for t in ("p", "q")
        )
    )
    for tag, response in zip(("p", "q"), bodies, strict=True):
        assert response.json()["logLines"] == [
            f"[LOG] '{tag} start'",
            f"[WARN] '{tag} setting {tag} to 1.0'",
            f"[LOG] '{tag} done'",
        ]

    # Over the sync socket: the subscription's result and each socket's mutation response.
    one, two = await SyncClient.connect(ripple.ws_url), await SyncClient.connect(ripple.ws_url)
    qid = await one.subscribe("testing:chattyCount", {"twitchId": "s", "tag": "one"})
    first = next(
        m for msg in one.received if msg["type"] == "Transition" for m in msg["modifications"] if m["queryId"] == qid
    )
    assert first["logLines"] == ["[LOG] 'one read s: -1'", "[INFO] 'one counted -1'"]
    responses = await asyncio.gather(
        one.mutation("testing:chattySet", {"twitchId": "s", "progress": 5, "tag": "one", "delayS": 0.2}),
        two.mutation("testing:chattySet", {"twitchId": "t", "progress": 6, "tag": "two", "delayS": 0.2}),
    )
    for tag, response in zip(("one", "two"), responses, strict=True):
        assert response["success"] and all(
            line.startswith(f"[LOG] '{tag} ") or f"'{tag} " in line for line in response["logLines"]
        )
        assert len(response["logLines"]) == 3, response
    # The hub's re-run sends its own lines with the new result.
    assert one.results[qid] == 5  # the Transition covering the mutation came before its promise resolved
    rerun = [
        m for msg in one.received if msg["type"] == "Transition" for m in msg["modifications"] if m["queryId"] == qid
    ][-1]
    assert rerun["logLines"] == ["[LOG] 'one read s: 5.0'", "[INFO] 'one counted 5.0'"]
    await one.close()
    await two.close()


async def test_log_lines_are_capped(ripple: RippleServer) -> None:
    body = (await ripple.http("query", "testing:floodLog", {"lines": MAX_LINES + 10})).json()
    assert len(body["logLines"]) == MAX_LINES + 1 and "Log overflow" in body["logLines"][-1]
    body = (await ripple.http("query", "testing:floodLog", {"lines": 1, "width": MAX_LINE_CHARS + 100})).json()
    (line,) = body["logLines"]
    assert line.endswith(f"… ({MAX_LINE_CHARS + 100} characters)'") and len(line) < MAX_LINE_CHARS + 40


async def test_the_log_stream_needs_the_admin_key_and_streams_calls(ripple: RippleServer) -> None:
    async with httpx.AsyncClient(base_url=ripple.url, timeout=10) as http:
        assert (await http.get("/api/logs")).status_code == 401
        bad = await http.get("/api/logs", headers={"Authorization": "Convex wrong"})
        assert bad.status_code == 401
        user = await http.get("/api/logs", headers={"Authorization": f"Bearer {ripple.token('alice')}"})
        assert user.status_code == 401 and "admin key" in user.json()["message"]
        headers = {"Authorization": f"Convex {ADMIN_KEY}"}
        async with http.stream("GET", "/api/logs?function=testing:chattyCount", headers=headers) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith(":")  # the stream is open before anything is called
            await ripple.http("query", "testing:count", {"twitchId": "z"})  # filtered out
            await ripple.http("query", "testing:chattyCount", {"twitchId": "z", "tag": "live"})
            records = []
            while len(records) < 3:
                line = await asyncio.wait_for(anext(lines), 5)
                if line.startswith("data: "):
                    records.append(json.loads(line[6:]))
        assert [r["type"] for r in records] == ["line", "line", "call"]
        assert records[0]["message"] == "live read z: -1" and records[1]["level"] == "info"
        call = records[2]
        assert call["function"] == "testing:chattyCount" and call["transport"] == "http" and call["outcome"] == "ok"
        assert len({r["request_id"] for r in records}) == 1


async def test_metrics_count_every_transport(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    await client.subscribe("testing:chattyCount", {"twitchId": "m"})
    await client.mutation("testing:chattySet", {"twitchId": "m", "progress": 2})
    await ripple.http("query", "nowhere:fn", {})
    async with httpx.AsyncClient(base_url=ripple.url) as http:
        text = (await http.get("/metrics")).text
    calls = 'ripple_function_calls_total{kind="%s",outcome="%s",path="%s",transport="%s"}'
    assert value(text, calls % ("mutation", "ok", "testing:chattySet", "websocket")) == 1
    assert value(text, calls % ("query", "ok", "testing:chattyCount", "hub")) >= 2  # first run and the re-run
    assert value(text, calls % ("query", "FunctionNotFound", "unknown", "http")) == 1
    assert value(text, 'ripple_query_reruns_total{path="testing:chattyCount"}') >= 2
    assert value(text, 'ripple_function_duration_seconds_count{kind="mutation",transport="websocket"}') == 1
    assert value(text, "ripple_connections") == 1
    await client.close()


async def test_the_official_npm_client_prints_the_function_log_lines(ripple: RippleServer) -> None:
    async with await ClientDriver.start("node", ripple.url) as client:
        await client.subscribe("s", "testing:chattyCount", {"twitchId": "n", "tag": "npm"})
        await client.next_update("s")
        query_line = await client.expect(lambda e: e.get("event") == "log" and "npm read n" in e["message"])
        assert "[CONVEX Q(testing:chattyCount)] [LOG]" in query_line["message"], query_line
        result = await client.call("mutation", "testing:chattySet", {"twitchId": "n", "progress": 1, "tag": "npm"})
        assert result["event"] == "result", result
        done = await client.expect(lambda e: e.get("event") == "log" and "npm done" in e["message"])
        assert "[CONVEX M(testing:chattySet)] [LOG]" in done["message"], done


async def test_ripple_logs_follows_the_stream(ripple: RippleServer) -> None:
    printed: list[str] = []
    follower = asyncio.create_task(
        asyncio.to_thread(tail, ripple.url, ADMIN_KEY, function="testing:buggy", count=2, out=printed.append)
    )
    while not ripple.services.log_stream.readers:
        await asyncio.sleep(0.02)
    body = (await ripple.http("mutation", "testing:buggy", {"key": "x"})).json()
    request_id = UNCAUGHT.match(body["errorMessage"])[1]  # type: ignore[index]
    assert await asyncio.wait_for(follower, 10) == 0
    assert printed[0].endswith(f"LOG   testing:buggy [{request_id}] looking up x")
    assert "testing:buggy mutation via http: uncaught in" in printed[1] and f"request {request_id}" in printed[1]
    assert await asyncio.to_thread(tail, ripple.url, "wrong", count=1) == 1  # refused: HTTP 401
