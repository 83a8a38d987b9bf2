"""A raw sync-protocol client for tests, which checks the protocol's invariants on every message it receives:
each Transition starts exactly where the previous one ended, and ts never goes backwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import uuid
from collections.abc import Callable
from typing import Any

import websockets


def ts_of(b64: str) -> int:
    return int(struct.unpack("<Q", base64.b64decode(b64))[0])


class SyncClient:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.session_id = str(uuid.uuid4())
        self.version = {"querySet": 0, "identity": 0, "ts": "AAAAAAAAAAA="}
        self.query_set = 0
        self.next_query_id = 0
        self.next_request_id = 0
        self.results: dict[int, Any] = {}
        self.errors: dict[int, dict[str, Any]] = {}
        self.journals: dict[int, Any] = {}
        self.received: list[dict[str, Any]] = []
        self._unread: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str, *, connect: bool = True, max_queue: int | None = 16) -> SyncClient:
        """`max_queue=1` makes a slow reader: the library stops reading the socket once a message is buffered."""
        # No compression, so that message sizes on the wire are what the tests intend.
        ws = await websockets.connect(url, max_size=None, max_queue=max_queue, compression=None)
        client = cls(ws)
        if connect:
            await client.send(
                {
                    "type": "Connect",
                    "sessionId": client.session_id,
                    "connectionCount": 0,
                    "lastCloseReason": "InitialConnect",
                    "clientTs": 0,
                }
            )
        return client

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def _receive(self, timeout_s: float) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))
        self.received.append(message)
        if message["type"] == "Transition":
            assert message["startVersion"] == self.version, (message["startVersion"], self.version)
            assert ts_of(message["endVersion"]["ts"]) >= ts_of(self.version["ts"])
            self.version = message["endVersion"]
            for mod in message["modifications"]:
                qid = mod["queryId"]
                if mod["type"] == "QueryUpdated":
                    self.results[qid] = mod["value"]
                    self.errors.pop(qid, None)
                    self.journals[qid] = mod["journal"]
                elif mod["type"] == "QueryFailed":
                    self.errors[qid] = mod
                    self.results.pop(qid, None)
                else:
                    self.results.pop(qid, None)
        return message

    async def expect(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0) -> dict[str, Any]:
        """The first message (unread ones first) that matches; others stay unread."""
        for i, message in enumerate(self._unread):
            if predicate(message):
                return self._unread.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message; received: {self._recent()}")
            try:
                message = await self._receive(remaining)
            except TimeoutError:
                raise TimeoutError(f"no matching message; received: {self._recent()}") from None
            if predicate(message):
                return message
            self._unread.append(message)

    def _recent(self) -> str:
        return "\n".join(json.dumps(m)[:300] for m in self.received[-10:])

    async def settle(self, quiet_s: float = 0.3) -> None:
        """Read everything that arrives until the socket is quiet for `quiet_s`."""
        while True:
            try:
                self._unread.append(await self._receive(quiet_s))
            except TimeoutError:
                return

    async def subscribe(
        self, path: str, args: dict[str, Any] | None = None, *, journal: str | None = None, wait: bool = True
    ) -> int:
        qid = self.next_query_id
        self.next_query_id += 1
        add: dict[str, Any] = {"type": "Add", "queryId": qid, "udfPath": path, "args": [args or {}]}
        if journal is not None:
            add["journal"] = journal
        await self.modify([add], wait=wait)
        return qid

    async def unsubscribe(self, qid: int) -> None:
        await self.modify([{"type": "Remove", "queryId": qid}])

    async def modify(self, modifications: list[dict[str, Any]], *, wait: bool = True) -> None:
        base, self.query_set = self.query_set, self.query_set + 1
        await self.send(
            {
                "type": "ModifyQuerySet",
                "baseVersion": base,
                "newVersion": self.query_set,
                "modifications": modifications,
            }
        )
        if wait:
            target = self.query_set
            await self.expect(lambda m: m["type"] == "Transition" and m["endVersion"]["querySet"] >= target)

    async def mutation(
        self, path: str, args: dict[str, Any] | None = None, *, request_id: int | None = None, kind: str = "Mutation"
    ) -> dict[str, Any]:
        """Send a mutation; return its response after the Transition that covers it has arrived."""
        if request_id is None:
            request_id = self.next_request_id
            self.next_request_id += 1
        await self.send({"type": kind, "requestId": request_id, "udfPath": path, "args": [args or {}]})
        response = await self.expect(lambda m: m["type"] == f"{kind}Response" and m["requestId"] == request_id)
        covered = ts_of(response["ts"]) if response.get("ts") else 0
        # Read-your-writes: a Transition covering the commit follows the response.
        await self.expect(lambda m: m["type"] == "Transition" and ts_of(m["endVersion"]["ts"]) >= covered)
        return response

    async def authenticate(self, token: str | None, token_type: str = "User") -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "Authenticate",
            "tokenType": token_type if token else "None",
            "baseVersion": self.version["identity"],
        }
        if token:
            message["value"] = token
        await self.send(message)
        return await self.expect(
            lambda m: (
                m["type"] in ("AuthError", "FatalError")
                or (m["type"] == "Transition" and m["endVersion"]["identity"] > m["startVersion"]["identity"])
            )
        )


class ResumableClient(SyncClient):
    """A SyncClient that can lose its socket and come back as the official clients do (`BaseConvexClient`'s
    onOpen): the same sessionId with connectionCount + 1, then its token and its whole query set again, then the
    requests it had in flight, with their requestIds. The server may have applied such a mutation already; it
    must apply it exactly once."""

    def __init__(self, ws: Any) -> None:
        super().__init__(ws)
        self.url = ""
        self.connection_count = 0
        self.token: str | None = None
        self.queries: dict[int, dict[str, Any]] = {}  # queryId -> its Add

    @classmethod
    async def open(cls, url: str) -> ResumableClient:
        client = await cls.connect(url)
        assert isinstance(client, ResumableClient)
        client.url = url
        return client

    async def modify(self, modifications: list[dict[str, Any]], *, wait: bool = True) -> None:
        for mod in modifications:
            if mod["type"] == "Add":
                self.queries[mod["queryId"]] = mod
            else:
                self.queries.pop(mod["queryId"], None)
        await super().modify(modifications, wait=wait)

    async def authenticate(self, token: str | None, token_type: str = "User") -> dict[str, Any]:
        """As SyncClient's, but the confirming Transition is one past the identity version it was sent at (an
        unread identity Transition of an earlier Authenticate, e.g. the one `reconnect` sent, does not count)."""
        self.token = token
        base = self.version["identity"]
        message: dict[str, Any] = {"type": "Authenticate", "tokenType": token_type if token else "None"}
        message["baseVersion"] = base
        if token:
            message["value"] = token
        await self.send(message)
        return await self.expect(
            lambda m: (
                m["type"] in ("AuthError", "FatalError")
                or (m["type"] == "Transition" and m["endVersion"]["identity"] > base)
            )
        )

    async def read_for(self, seconds: float) -> None:
        """Read (and check) whatever arrives for `seconds`, keeping it unread, so the socket never backs up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            try:
                self._unread.append(await self._receive(remaining))
            except TimeoutError:
                return

    def drop(self) -> None:
        """Lose the socket abruptly: the TCP connection is aborted, no close frame is sent."""
        self.ws.transport.abort()

    async def reconnect(self, resend: list[dict[str, Any]], *, url: str | None = None) -> None:
        """A new socket for the same session (to `url`, else the same one), after `drop()`: Connect, then
        Authenticate and the query set from version 0, then `resend` (requests in flight), without waiting."""
        self.url = url or self.url
        self.ws = await websockets.connect(self.url, max_size=None, max_queue=16, compression=None)
        self.connection_count += 1
        self.version = {"querySet": 0, "identity": 0, "ts": "AAAAAAAAAAA="}
        self._unread = []
        await self.send(
            {
                "type": "Connect",
                "sessionId": self.session_id,
                "connectionCount": self.connection_count,
                "lastCloseReason": "WebSocket closed with code 1006",
                "clientTs": 0,
            }
        )
        if self.token is not None:
            await self.send({"type": "Authenticate", "tokenType": "User", "value": self.token, "baseVersion": 0})
        adds = []
        for qid, add in self.queries.items():
            add = dict(add)
            if self.journals.get(qid) is not None:
                add["journal"] = self.journals[qid]
            adds.append(add)
        self.query_set = 0
        if adds:
            self.query_set = 1
            await self.send({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": adds})
        for message in resend:
            await self.send(message)
