"""`SyncState`: one sync socket's versions, query set, identity and read-your-writes rules, with no I/O.

Inputs are method calls (a message received, a hub delivery, a mutation done, a ts processed); outputs are the
effects the shell (`session.py`) performs, in order: hub subscriptions, messages to queue, runs, waits, a close.
Keeping it pure lets a property test drive it through every interleaving against a model (Convex splits its
sync worker the same way: `crates/sync/src/state.rs` and `worker.rs`).

The client's view moves only in whole steps. Each ModifyQuerySet or Authenticate received appends a pending
change: the querySet/identity versions after it and the full query id → token mapping it asks for. A change
is shown once every token of its mapping has a result; a later complete change supersedes earlier ones, so a
token replaced before it was ever shown blocks nothing. Tokens the client shows stay subscribed until the view
moves past them, so what it shows stays live meanwhile (an Authenticate during a mutation keeps the old
subscriptions updating until the new ones have results).

Invariant (asserted by tests/sync/test_state_properties.py): every token in `shown_tokens` is subscribed in
the hub and its latest delivered result has been queued. The hub delivers a token's result whenever it
changes, so a Transition at any ts the hub has processed is consistent: that is what `covered` relies on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from server.functions.context import Caller
from server.hub.instances import QueryResult
from server.sync import protocol
from server.sync.protocol import StateVersion, TransitionMessage

__all__ = [
    "MAX_IN_FLIGHT_REQUESTS",
    "Close",
    "Cover",
    "Effect",
    "Run",
    "Send",
    "SendTransition",
    "Sub",
    "Subscribe",
    "SyncState",
    "Unsubscribe",
]

# Convex's limit on a socket's mutations and actions received and not yet answered.
MAX_IN_FLIGHT_REQUESTS = 1000


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe `token` in the hub; its first result arrives through `deliver`."""

    token: int
    path: str
    args: dict[str, Any] | ValueError
    journal: str | None
    caller: Caller


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    token: int


@dataclass(frozen=True, slots=True)
class Send:
    """Queue a pre-serialised message."""

    text: str


@dataclass(frozen=True, slots=True)
class SendTransition:
    """Queue a Transition (the outbox merges it into an unsent one)."""

    transition: TransitionMessage


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket after what is queued; nothing more is accepted from it."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Run:
    """Run a mutation (serially, in arrival order) or an action (concurrently) as `caller`, the identity current
    when it was received; then call `request_done`."""

    request: protocol.Mutation | protocol.Action
    caller: Caller


@dataclass(frozen=True, slots=True)
class Cover:
    """Wait until the hub has processed `ts`, then call `covered(cover_id, processed_ts)`."""

    cover_id: int
    ts: int


Effect = Subscribe | Unsubscribe | Send | SendTransition | Close | Run | Cover


@dataclass(frozen=True, slots=True)
class Sub:
    """A query of the set, under one subscription token (a new token for new args or a new identity)."""

    token: int
    path: str
    args: dict[str, Any] | ValueError
    journal: str | None


@dataclass(slots=True)
class _Pending:
    """A change received but not shown yet: the versions after it and the query id → token mapping it asks for.

    `missing` holds the target's tokens with no result yet (neither shown nor in `results`); it only shrinks.
    """

    query_set: int
    identity: int
    target: dict[int, int]
    missing: set[int] = field(default_factory=set)


class SyncState:
    def __init__(self, new_token: Callable[[], int], *, max_in_flight: int = MAX_IN_FLIGHT_REQUESTS) -> None:
        self._new_token = new_token
        self.max_in_flight = max_in_flight
        # What the client was sent: the endVersion of the last Transition queued, and query id → token shown.
        self.shown = StateVersion()
        self.shown_tokens: dict[int, int] = {}
        self._shown_by_token: dict[int, int] = {}
        # What the client asked for, after every message received so far.
        self.query_set_received = 0
        self.identity_received = 0
        self.caller = Caller()
        self.desired: dict[int, Sub] = {}
        self._desired_by_token: dict[int, int] = {}
        self.pending: list[_Pending] = []
        # token → result delivered and not queued yet, for tokens of pending targets only.
        self.results: dict[int, QueryResult] = {}
        # Every token subscribed in the hub: shown ones, and those of pending targets.
        self.subscribed: set[int] = set()
        self.in_flight = 0
        self.transitions = 0  # Transitions queued so far
        self._covers: dict[int, tuple[int, int]] = {}  # cover id → (ts to cover, `transitions` at the response)
        self._next_cover = 0
        self.closed = False

    # Messages received.

    def modify_query_set(self, message: protocol.ModifyQuerySet, processed_ts: int) -> list[Effect]:
        if self.closed:
            return []
        if message.baseVersion != self.query_set_received or message.newVersion <= message.baseVersion:
            return self._fatal(
                f"ModifyQuerySet from version {message.baseVersion} to {message.newVersion}, but the query set is "
                f"at version {self.query_set_received}",
                "query set version mismatch",
            )
        desired = dict(self.desired)
        for mod in message.modifications:
            if isinstance(mod, protocol.RemoveQuery):
                if desired.pop(mod.queryId, None) is None:
                    return self._fatal(
                        f"ModifyQuerySet {message.newVersion} removes queryId {mod.queryId}, which is not in the "
                        "query set",
                        "unknown queryId removed",
                    )
                continue
            if mod.queryId in desired:
                return self._fatal(
                    f"ModifyQuerySet {message.newVersion} adds queryId {mod.queryId}, which is already in the "
                    "query set; remove it first or use a new queryId",
                    "duplicate queryId added",
                )
            args: dict[str, Any] | ValueError
            try:
                args = protocol.args_object(mod.args)
            except ValueError as exc:
                args = exc  # the hub delivers the failure, in order with the other results
            desired[mod.queryId] = Sub(self._new_token(), mod.udfPath, args, mod.journal)
        self.query_set_received = message.newVersion
        known = {sub.token for sub in self.desired.values()}
        effects: list[Effect] = [self._subscribe(sub) for sub in desired.values() if sub.token not in known]
        self._set_desired(desired)
        self._append_pending()
        return effects + self._advance(processed_ts, [])

    def authenticate(
        self, base_version: int, caller: Caller | None, error: str | None, processed_ts: int
    ) -> list[Effect]:
        """An Authenticate whose token was verified (`caller`) or refused (`error`)."""
        if self.closed:
            return []
        base = self.identity_received
        if base_version != base:
            error = f"Authenticate baseVersion {base_version} does not match identity version {base}"
            return self._close(protocol.auth_error(error, base, attempted=True), "authentication version mismatch")
        if caller is None:
            return self._close(
                protocol.auth_error(error or "invalid token", base, attempted=True), "authentication failed"
            )
        self.identity_received += 1
        self.caller = caller
        self._set_desired(
            {
                query_id: Sub(self._new_token(), sub.path, sub.args, sub.journal)
                for query_id, sub in self.desired.items()
            }
        )
        effects: list[Effect] = [self._subscribe(sub) for sub in self.desired.values()]
        self._append_pending()
        return effects + self._advance(processed_ts, [])

    def token_expired(self) -> list[Effect]:
        if self.closed:
            return []
        return self._close(
            protocol.auth_error("TokenExpired", self.identity_received, attempted=False), "token expired"
        )

    def request_received(self, request: protocol.Mutation | protocol.Action) -> list[Effect]:
        """Capture the caller now: a later Authenticate must not change who a queued mutation runs as."""
        if self.closed:
            return []
        if self.in_flight >= self.max_in_flight:
            kind: Literal["MutationResponse", "ActionResponse"] = (
                "MutationResponse" if isinstance(request, protocol.Mutation) else "ActionResponse"
            )
            response = protocol.mutation_response(
                kind,
                request.requestId,
                ok=False,
                result=(
                    f"{request.udfPath}: this connection already has {self.in_flight} mutations and actions in "
                    f"flight, the limit is {self.max_in_flight}; wait for some to finish before sending more"
                ),
            )
            return self._respond(response, 0)
        self.in_flight += 1
        return [Run(request, self.caller)]

    def request_done(self, response: str, ts: int) -> list[Effect]:
        """A mutation or action finished: queue its response (`ts` its commit ts, 0 if none); a Transition with
        end ts >= ts must follow it, which `Cover` arranges."""
        self.in_flight -= 1
        if self.closed:
            return []
        return self._respond(response, ts)

    def covered(self, cover_id: int, processed_ts: int) -> list[Effect]:
        """The hub has processed `processed_ts` >= the cover's ts: follow the response with a Transition at it,
        unless one covering it already did. Consistent by the invariant, so it may carry no modification."""
        ts, transitions_then = self._covers.pop(cover_id)
        if processed_ts < ts:
            raise ValueError(f"covered() at processed ts {processed_ts}, below the ts {ts} it must cover")
        if self.closed or (self.transitions > transitions_then and self.shown.ts >= ts):
            return []
        return [self._transition({}, self.shown.query_set, self.shown.identity, processed_ts)]

    # Hub deliveries.

    def deliver(self, ts: int, updates: list[tuple[int, QueryResult]]) -> list[Effect]:
        """Results at snapshot `ts` for this session's tokens (each token's result whenever it changed)."""
        if self.closed:
            return []
        fresh: dict[int, QueryResult] = {}
        for token, result in updates:
            if token not in self.subscribed:
                continue  # unsubscribed since the hub ran it
            fresh[token] = result
        if not fresh:
            return []
        for token, latest in fresh.items():
            query_id = self._desired_by_token.get(token)
            if query_id is not None and latest.journal != (sub := self.desired[query_id]).journal:
                self.desired[query_id] = Sub(token, sub.path, sub.args, latest.journal)  # for a re-subscription
        if not self.pending:
            mods = {
                self._shown_by_token[token]: result.modification(self._shown_by_token[token])
                for token, result in fresh.items()
                if token in self._shown_by_token
            }
            return self._advance(ts, [], mods) if mods else []
        self.results.update(fresh)
        for pending in self.pending:
            pending.missing.difference_update(fresh)
        return self._advance(ts, [])

    def close(self) -> list[Effect]:
        """The socket is gone: unsubscribe everything."""
        self.closed = True
        tokens, self.subscribed = self.subscribed, set()
        self.results.clear()
        self.pending.clear()
        return [Unsubscribe(token) for token in sorted(tokens)]

    # Internals.

    def _set_desired(self, desired: dict[int, Sub]) -> None:
        self.desired = desired
        self._desired_by_token = {sub.token: query_id for query_id, sub in desired.items()}

    def _subscribe(self, sub: Sub) -> Subscribe:
        self.subscribed.add(sub.token)
        return Subscribe(sub.token, sub.path, sub.args, sub.journal, self.caller)

    def _append_pending(self) -> None:
        target = {query_id: sub.token for query_id, sub in self.desired.items()}
        missing = {t for t in target.values() if t not in self._shown_by_token and t not in self.results}
        self.pending.append(_Pending(self.query_set_received, self.identity_received, target, missing))

    def _advance(self, ts: int, effects: list[Effect], mods: dict[int, str] | None = None) -> list[Effect]:
        """Show the last complete pending change, if any, with every new result for what the client will then
        show; else only the new results of shown queries (`mods` when the caller already built them). Then drop
        the subscriptions nothing needs any more."""
        k = next((i for i in range(len(self.pending) - 1, -1, -1) if not self.pending[i].missing), None)
        if k is None:
            if mods is None:
                mods = {}
                for token in [t for t in self.results if t in self._shown_by_token]:
                    query_id = self._shown_by_token[token]
                    mods[query_id] = self.results.pop(token).modification(query_id)
            if mods:
                effects.append(self._transition(mods, self.shown.query_set, self.shown.identity, ts))
            return effects
        change = self.pending[k]
        del self.pending[: k + 1]
        mods = {}
        for query_id in self.shown_tokens:
            if query_id not in change.target:
                mods[query_id] = protocol.query_removed(query_id)
        for query_id, token in change.target.items():
            result = self.results.pop(token, None)
            if result is not None:
                mods[query_id] = result.modification(query_id)
            elif self.shown_tokens.get(query_id) != token:
                raise AssertionError(f"query {query_id}: a complete change lacks the result of token {token}")
        self.shown_tokens = dict(change.target)
        self._shown_by_token = {token: query_id for query_id, token in change.target.items()}
        if mods or (change.query_set, change.identity) != (self.shown.query_set, self.shown.identity):
            effects.append(self._transition(mods, change.query_set, change.identity, ts))
        needed = set(self._shown_by_token)
        for pending in self.pending:
            needed.update(pending.target.values())
        for token in sorted(self.subscribed - needed):
            effects.append(Unsubscribe(token))
            self.results.pop(token, None)
        self.subscribed &= needed
        return effects

    def _transition(self, mods: dict[int, str], query_set: int, identity: int, ts: int) -> SendTransition:
        end = StateVersion(query_set, identity, max(ts, self.shown.ts))
        transition = TransitionMessage(self.shown, end, mods)
        self.shown = end
        self.transitions += 1
        return SendTransition(transition)

    def _respond(self, response: str, ts: int) -> list[Effect]:
        self._next_cover += 1
        self._covers[self._next_cover] = (ts, self.transitions)
        return [Send(response), Cover(self._next_cover, ts)]

    def _fatal(self, error: str, reason: str) -> list[Effect]:
        return self._close(protocol.fatal_error(error), reason)

    def _close(self, text: str, reason: str) -> list[Effect]:
        self.closed = True
        return [Send(text), Close(1000, reason)]
