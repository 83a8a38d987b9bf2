"""`Session`: one sync socket's state and rules, between the socket loops and the hub.

It keeps the versions the protocol demands (every Transition starts where the last one ended; `querySet`
and `identity` advance only once every result they promise is included), runs mutations one at a time in
arrival order, and guarantees read-your-writes: after a MutationResponse with commit ts T it sends a
Transition whose ts covers T. Outgoing messages wait in one ordered outbox; an unsent Transition absorbs
later ones (latest result per query), so a slow client costs memory per query, not per commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.auth import AuthError
from server.errors import describe
from server.functions.context import Caller
from server.functions.registry import FunctionKind
from server.hub.instances import QueryResult
from server.sync import protocol
from server.sync.protocol import StateVersion, TransitionMessage

if TYPE_CHECKING:
    from server.app import Services

__all__ = ["Closing", "Session"]

log = logging.getLogger("ripple.sync")


@dataclass(frozen=True, slots=True)
class Closing:
    """Why a session ends: `code` and `reason` go in the WebSocket close frame."""

    code: int
    reason: str


@dataclass(slots=True)
class _Query:
    query_id: int
    token: int
    path: str
    args: dict[str, Any] | ValueError
    journal: str | None


@dataclass(slots=True)
class _Pending:
    """A query-set or identity change whose version may be sent once `waiting` tokens have results."""

    query_set: int | None = None
    identity: int | None = None
    waiting: set[int] = field(default_factory=set)
    removed: list[int] = field(default_factory=list)


class Session:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.hub = services.hub
        self.session_id: str | None = None
        # A session's first connection (connectionCount 0) cannot be resending an applied mutation.
        self.resumed = True
        self.clock_skew_ms = 0
        self.caller = Caller()
        self.query_set_received = 0
        self.identity_received = 0
        self.last_sent = StateVersion()  # the endVersion of the last Transition queued
        self.queries: dict[int, _Query] = {}
        self._by_token: dict[int, int] = {}
        self._pending: deque[_Pending] = deque()
        self.outbox: deque[str | TransitionMessage] = deque()
        self._send_waiter: asyncio.Future[None] | None = None
        self._transitions_queued = 0
        self._mutations: asyncio.Queue[protocol.Mutation] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mutation_worker: asyncio.Task[None] | None = None  # started by the first mutation
        self._expiry: asyncio.TimerHandle | None = None
        self.closed: Closing | None = None
        # Set when the close frame could not be sent either; the receive loop then stops on its own.
        self.aborted = False
        # Read by socket.watch_sessions: when the current send began (None when not sending), the last send.
        self.sending_since: float | None = None
        self.last_send = asyncio.get_running_loop().time()
        self.stuck = False
        self.sender: asyncio.Task[None] | None = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for token in list(self._by_token):
            self.hub.unsubscribe(token)
        self._by_token.clear()
        if self._expiry is not None:
            self._expiry.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def ping(self) -> None:
        self._send(protocol.PING)

    def give_up(self, reason: str) -> None:
        """A send has been blocked too long: stop it and close with 1013 (overloaded), so the client reconnects."""
        if self.stuck:
            return
        self.shut(1013, reason)
        self.stuck = True
        if self.sender is not None:
            self.sender.cancel()

    def shut(self, code: int, reason: str) -> None:
        """Close this socket after what is queued has been sent (server shutdown, tests)."""
        if self.closed is None:
            self.closed = Closing(code, reason)
        self._wake_sender()

    # Outbox.

    def _wake_sender(self) -> None:
        waiter = self._send_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def outbox_filled(self) -> None:
        """Return once there is something to send or the socket is closing (at once if so already).

        A bare future per wait rather than an asyncio.Event: a change can wake thousands of sockets at once, and
        the Event's bookkeeping showed in the fan-out time.
        """
        while not self.outbox and self.closed is None:
            self._send_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._send_waiter
            finally:
                self._send_waiter = None

    def _send(self, message: str) -> None:
        self.outbox.append(message)
        self._check_backlog()
        self._wake_sender()

    def _send_transition(self, transition: TransitionMessage) -> None:
        self.last_sent = transition.end
        self._transitions_queued += 1
        tail = self.outbox[-1] if self.outbox else None
        if isinstance(tail, TransitionMessage):
            tail.merge(transition)
        else:
            self.outbox.append(transition)
            self._check_backlog()
        self._wake_sender()

    def _check_backlog(self) -> None:
        if len(self.outbox) > self.services.settings.max_pending_transitions and self.closed is None:
            self.shut(1013, "client too slow: its unsent backlog is over the limit; reconnect")

    def next_message(self) -> str | None:
        if not self.outbox:
            return None
        item = self.outbox.popleft()
        if isinstance(item, TransitionMessage):
            return item.wire(time.time_ns(), self.clock_skew_ms)
        return item

    # Transitions.

    def deliver(self, ts: int, updates: list[tuple[int, QueryResult]]) -> None:
        """Called by the hub at the end of a round: results at snapshot `ts` for this session's tokens."""
        modifications: dict[int, str] = {}
        for token, result in updates:
            query_id = self._by_token.get(token)
            if query_id is None:
                continue  # removed or replaced since the hub ran it
            query = self.queries[query_id]
            query.journal = result.journal
            modifications[query_id] = result.modification(query_id)
            for pending in self._pending:
                pending.waiting.discard(token)
        self._emit(ts, modifications, force=bool(modifications))

    def _emit(self, ts: int, modifications: dict[int, str], *, force: bool) -> None:
        """Queue a Transition carrying `modifications` and every pending version that became complete."""
        query_set, identity = self.last_sent.query_set, self.last_sent.identity
        while self._pending and not self._pending[0].waiting:
            pending = self._pending.popleft()
            if pending.query_set is not None:
                query_set = pending.query_set
            if pending.identity is not None:
                identity = pending.identity
            for query_id in pending.removed:
                modifications[query_id] = protocol.query_removed(query_id)
            force = True
        if not force:
            return
        end = StateVersion(query_set, identity, max(ts, self.last_sent.ts))
        self._send_transition(TransitionMessage(self.last_sent, end, modifications))

    # Messages.

    async def handle(self, text: str) -> None:
        try:
            message = protocol.parse_client_message(text)
        except ValueError as exc:
            # No request to attach the error to; official clients never send such frames.
            self._send(protocol.fatal_error(f"Ripple could not read a message: {exc}"))
            return
        if isinstance(message, protocol.Connect):
            self.session_id = message.sessionId
            self.resumed = message.connectionCount > 0
            if message.clientTs:
                self.clock_skew_ms = int(message.clientTs - time.time() * 1000)
        elif isinstance(message, protocol.ModifyQuerySet):
            self._modify_query_set(message)
        elif isinstance(message, protocol.Mutation):
            self._mutations.put_nowait(message)
            if self._mutation_worker is None:
                self._mutation_worker = self._spawn(self._run_mutations())
        elif isinstance(message, protocol.Action):
            self._spawn(self._run_action(message))
        elif isinstance(message, protocol.Authenticate):
            await self._authenticate(message)

    def handle_binary(self) -> None:
        self._send(protocol.fatal_error("Ripple speaks JSON in text frames; a binary frame was ignored"))

    def _modify_query_set(self, message: protocol.ModifyQuerySet) -> None:
        if message.baseVersion != self.query_set_received or message.newVersion <= message.baseVersion:
            self._send(
                protocol.fatal_error(
                    f"ModifyQuerySet from version {message.baseVersion} to {message.newVersion}, but the "
                    f"query set is at version {self.query_set_received}"
                )
            )
            self.shut(1000, "query set version mismatch")
            return
        self.query_set_received = message.newVersion
        pending = _Pending(query_set=message.newVersion)
        for mod in message.modifications:
            if isinstance(mod, protocol.RemoveQuery):
                query = self.queries.pop(mod.queryId, None)
                if query is not None:
                    self._by_token.pop(query.token, None)
                    self.hub.unsubscribe(query.token)
                    for earlier in self._pending:
                        earlier.waiting.discard(query.token)
                pending.removed.append(mod.queryId)
                continue
            args: dict[str, Any] | ValueError
            try:
                args = protocol.args_object(mod.args)
            except ValueError as exc:
                args = exc
            token = self._subscribe(mod.queryId, mod.udfPath, args, mod.journal)
            pending.waiting.add(token)
        self._pending.append(pending)
        self._emit(self.hub.processed_ts, {}, force=False)

    def _subscribe(self, query_id: int, path: str, args: Any, journal: str | None) -> int:
        old = self.queries.get(query_id)
        if old is not None:
            self._by_token.pop(old.token, None)
            self.hub.unsubscribe(old.token)
        token = self.hub.new_token()
        self.queries[query_id] = _Query(query_id, token, path, args, journal)
        self._by_token[token] = query_id
        # Bad args still go through the hub, so the failure arrives in order with the other results.
        self.hub.subscribe(self, token, path, args, journal, self.caller)
        return token

    async def _authenticate(self, message: protocol.Authenticate) -> None:
        base = self.identity_received
        if message.baseVersion != base:
            self._send(
                protocol.auth_error(
                    f"Authenticate baseVersion {message.baseVersion} does not match identity version {base}",
                    base,
                    attempted=True,
                )
            )
            self.shut(1000, "authentication version mismatch")
            return
        try:
            caller = await self._caller_for(message)
        except AuthError as exc:
            self._send(protocol.auth_error(str(exc), base, attempted=True))
            self.shut(1000, "authentication failed")
            return
        self.identity_received += 1
        self.caller = caller
        self._schedule_expiry()
        pending = _Pending(identity=self.identity_received)
        for query in list(self.queries.values()):
            pending.waiting.add(self._subscribe(query.query_id, query.path, query.args, query.journal))
        self._pending.append(pending)
        self._emit(self.hub.processed_ts, {}, force=False)

    async def _caller_for(self, message: protocol.Authenticate) -> Caller:
        authenticator = self.services.authenticator
        if message.tokenType == "None":
            return Caller()
        if not message.value:
            raise AuthError(f"Authenticate with tokenType {message.tokenType} needs a value")
        if message.tokenType == "Admin":
            if not authenticator.verify_admin_key(message.value):
                raise AuthError("The admin key is not valid.")
            return Caller(is_admin=True)
        return Caller(await authenticator.verify_async(message.value))

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        expires = getattr(self.caller.identity, "expires_at_s", None)
        if expires is not None:
            delay = max(0.0, expires - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        self._send(protocol.auth_error("TokenExpired", self.identity_received, attempted=False))
        self.shut(1000, "token expired")

    # Mutations and actions.

    async def _run_mutations(self) -> None:
        """One at a time, in arrival order, as Convex does; each is followed by a covering Transition.

        The wait for that Transition runs beside the next mutation: only execution is serial, and the outbox
        keeps each response before the Transition that covers it.
        """
        while True:
            message = await self._mutations.get()
            try:
                args = protocol.args_object(message.args)
            except ValueError as exc:
                self._send(
                    protocol.mutation_response(
                        "MutationResponse", message.requestId, ok=False, result=f"{message.udfPath}: {exc}"
                    )
                )
                self._spawn(self._cover(0))
                continue
            dedupe = (self.session_id, message.requestId) if self.session_id else None
            outcome = await self.services.runner.call(
                message.udfPath,
                args,
                self.caller,
                kind=FunctionKind.MUTATION,
                dedupe=dedupe,
                maybe_applied=self.resumed,
            )
            if outcome.retries:
                self.services.metrics.mutation_retries.inc(outcome.retries)
            if outcome.ok:
                self._send(
                    protocol.mutation_response(
                        "MutationResponse", message.requestId, ok=True, result=outcome.value, ts=outcome.ts
                    )
                )
            else:
                self._send(
                    protocol.mutation_response(
                        "MutationResponse",
                        message.requestId,
                        ok=False,
                        result=outcome.error_message,
                        error_data=outcome.error_data,
                    )
                )
            self._spawn(self._cover(outcome.ts or 0))

    async def _cover(self, ts: int) -> None:
        """Make sure a Transition with end.ts >= ts follows what was just queued."""
        queued = self._transitions_queued
        try:
            await self.hub.wait_for_ts(ts)
        except ConnectionError:
            return
        if self._transitions_queued == queued or self.last_sent.ts < ts:
            self._emit(max(ts, self.hub.processed_ts), {}, force=True)

    async def _run_action(self, message: protocol.Action) -> None:
        try:
            args = protocol.args_object(message.args)
            outcome = await self.services.runner.call(message.udfPath, args, self.caller, kind=FunctionKind.ACTION)
        except ValueError as exc:
            self._send(
                protocol.mutation_response(
                    "ActionResponse", message.requestId, ok=False, result=f"{message.udfPath}: {exc}"
                )
            )
        except Exception as exc:
            self._send(protocol.mutation_response("ActionResponse", message.requestId, ok=False, result=describe(exc)))
        else:
            if outcome.ok:
                self._send(
                    protocol.mutation_response("ActionResponse", message.requestId, ok=True, result=outcome.value)
                )
            else:
                self._send(
                    protocol.mutation_response(
                        "ActionResponse",
                        message.requestId,
                        ok=False,
                        result=outcome.error_message,
                        error_data=outcome.error_data,
                    )
                )
        await self._cover(self.hub.processed_ts)
