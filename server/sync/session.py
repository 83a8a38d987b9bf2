"""`Session`: one sync socket's asyncio shell around its `SyncState`, between the socket loops and the hub.

Every rule about versions, tokens, identity and read-your-writes lives in `state.py`; this module performs its
effects: hub subscriptions, the outbox, the serial mutation worker, concurrent actions, the waits for a commit
ts to be processed, the auth expiry timer, and the Connect bookkeeping (session id, clock skew, resumed).
Outgoing messages wait in one ordered outbox; an unsent Transition absorbs later ones (latest result per
query), so a slow client costs memory per query, not per commit.

A closed session must be freed by reference counting alone (thousands of sockets come and go between full
collections): `close()` unsubscribes from the hub and drops every task and timer that refers back to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.auth import AuthError
from server.errors import describe
from server.functions.context import Caller
from server.functions.registry import FunctionKind
from server.functions.runner import Outcome
from server.hub.instances import QueryResult
from server.impersonation import admin_caller
from server.sync import protocol
from server.sync.protocol import TransitionMessage
from server.sync.state import (
    MAX_IN_FLIGHT_REQUESTS,
    Close,
    Cover,
    Effect,
    Run,
    Send,
    SendTransition,
    Subscribe,
    SyncState,
    Unsubscribe,
)

if TYPE_CHECKING:
    from server.app import Services

__all__ = ["Closing", "Session"]

log = logging.getLogger("ripple.sync")


@dataclass(frozen=True, slots=True)
class Closing:
    """Why a session ends: `code` and `reason` go in the WebSocket close frame."""

    code: int
    reason: str


class Session:
    def __init__(self, services: Services, *, max_in_flight: int = MAX_IN_FLIGHT_REQUESTS) -> None:
        self.services = services
        self.hub = services.hub
        self.state = SyncState(self.hub.new_token, max_in_flight=max_in_flight)
        self.session_id: str | None = None
        # A session's first connection (connectionCount 0) cannot be resending an applied mutation.
        self.resumed = True
        self.clock_skew_ms = 0
        self.outbox: deque[str | TransitionMessage] = deque()
        self._send_waiter: asyncio.Future[None] | None = None
        self._mutations: asyncio.Queue[Run] = asyncio.Queue()
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
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A task of this session that died of a bug would leave its requests unanswered for good: log it and close
        the socket (1011), so the client reconnects and resends them."""
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        log.error(
            "a task of sync session %s died; closing its socket so the client reconnects",
            self.session_id,
            exc_info=task.exception(),
        )
        self.shut(1011, "internal error in this connection; reconnect")

    async def close(self) -> None:
        """The socket is gone: unsubscribe, stop every task and timer, and drop what refers back to this session."""
        self._perform(self.state.close())
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._mutation_worker = None
        self.sender = None  # a finished task keeps its exception, whose traceback holds frames that hold us

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

    # Effects.

    def _perform(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, SendTransition):
                self._send_transition(effect.transition)
            elif isinstance(effect, Send):
                self._send(effect.text)
            elif isinstance(effect, Subscribe):
                # Bad args still go through the hub, so the failure arrives in order with the other results.
                self.hub.subscribe(self, effect.token, effect.path, effect.args, effect.journal, effect.caller)
            elif isinstance(effect, Unsubscribe):
                self.hub.unsubscribe(effect.token)
            elif isinstance(effect, Cover):
                if self.hub.processed_ts >= effect.ts:
                    self._perform(self.state.covered(effect.cover_id, self.hub.processed_ts))
                else:
                    self._spawn(self._cover(effect))
            elif isinstance(effect, Run):
                if isinstance(effect.request, protocol.Mutation):
                    self._mutations.put_nowait(effect)
                    if self._mutation_worker is None:
                        self._mutation_worker = self._spawn(self._run_mutations())
                else:
                    self._spawn(self._run_action(effect))
            elif isinstance(effect, Close):
                self.shut(effect.code, effect.reason)

    async def _cover(self, cover: Cover) -> None:
        try:
            await self.hub.wait_for_ts(cover.ts)
        except ConnectionError:
            return  # the hub is closing, and this socket with it
        self._perform(self.state.covered(cover.cover_id, self.hub.processed_ts))

    def deliver(self, ts: int, updates: list[tuple[int, QueryResult]]) -> None:
        """Called by the hub at the end of a round: results at snapshot `ts` for this session's tokens."""
        effects = self.state.deliver(ts, updates)
        if effects:
            self._perform(effects)

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
            self._perform(self.state.modify_query_set(message, self.hub.processed_ts))
        elif isinstance(message, protocol.Mutation | protocol.Action):
            self._perform(self.state.request_received(message))
        elif isinstance(message, protocol.Authenticate):
            await self._authenticate(message)

    def handle_binary(self) -> None:
        self._send(protocol.fatal_error("Ripple speaks JSON in text frames; a binary frame was ignored"))

    async def _authenticate(self, message: protocol.Authenticate) -> None:
        """Verified before the next message is read, so requests after it run as its identity."""
        caller: Caller | None = None
        error: str | None = None
        try:
            caller = await self._caller_for(message)
        except AuthError as exc:
            error = str(exc)
        version = self.state.identity_received
        self._perform(self.state.authenticate(message.baseVersion, caller, error, self.hub.processed_ts))
        if self.state.identity_received != version:
            self._schedule_expiry(self.state.caller)

    async def _caller_for(self, message: protocol.Authenticate) -> Caller:
        authenticator = self.services.authenticator
        if message.tokenType == "None":
            return Caller()
        if not message.value:
            raise AuthError(f"Authenticate with tokenType {message.tokenType} needs a value")
        if message.tokenType == "Admin":
            if not authenticator.verify_admin_key(message.value):
                raise AuthError("The admin key is not valid.")
            return admin_caller(message.impersonating, authenticator)  # `setAdminAuth(key, actingAs)`
        return Caller(await authenticator.verify_async(message.value))

    def _schedule_expiry(self, caller: Caller) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        expires = getattr(caller.identity, "expires_at_s", None)
        if expires is not None:
            delay = max(0.0, expires - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        self._perform(self.state.token_expired())

    # Mutations and actions.

    async def _run_mutations(self) -> None:
        """One at a time, in arrival order, as Convex does, each as the identity captured when it arrived.

        The wait for each one's covering Transition runs beside the next mutation: only execution is serial, and
        the outbox keeps each response before the Transition that covers it.
        """
        while True:
            run = await self._mutations.get()
            request = run.request
            try:
                args = protocol.args_object(request.args)
            except ValueError as exc:
                response = protocol.mutation_response(
                    "MutationResponse", request.requestId, ok=False, result=f"{request.udfPath}: {exc}"
                )
                self._perform(self.state.request_done(response, 0))
                continue
            dedupe = (self.session_id, request.requestId) if self.session_id else None
            outcome = await self.services.runner.call(
                request.udfPath,
                args,
                run.caller,
                kind=FunctionKind.MUTATION,
                dedupe=dedupe,
                maybe_applied=self.resumed,
                transport="websocket",
            )
            if outcome.retries:
                self.services.metrics.mutation_retries.inc(outcome.retries)
            response = _response("MutationResponse", request.requestId, outcome)
            self._perform(self.state.request_done(response, outcome.ts or 0))

    async def _run_action(self, run: Run) -> None:
        request = run.request
        try:
            args = protocol.args_object(request.args)
            outcome = await self.services.runner.call(
                request.udfPath,
                args,
                run.caller,
                kind=FunctionKind.ACTION,
                transport="websocket",
            )
        except ValueError as exc:
            response = protocol.mutation_response(
                "ActionResponse", request.requestId, ok=False, result=f"{request.udfPath}: {exc}"
            )
        except Exception as exc:
            response = protocol.mutation_response("ActionResponse", request.requestId, ok=False, result=describe(exc))
        else:
            response = _response("ActionResponse", request.requestId, outcome)
        self._perform(self.state.request_done(response, self.hub.processed_ts))


def _response(kind: Any, request_id: int, outcome: Outcome) -> str:
    if outcome.ok:
        ts = outcome.ts if kind == "MutationResponse" else None
        return protocol.mutation_response(
            kind, request_id, ok=True, result=outcome.value, ts=ts, log_lines=outcome.log_lines
        )
    return protocol.mutation_response(
        kind,
        request_id,
        ok=False,
        result=outcome.error_message,
        error_data=outcome.error_data,
        log_lines=outcome.log_lines,
    )
