"""`QueryInstance`: one query execution shared by every identical subscription, and its latest result.

Identical means same function, same arguments and same journal; and, once a run has shown that the query
looks at `ctx.auth`, the same caller. An instance that never read auth is shared across callers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from server import values
from server.functions.context import Caller
from server.functions.runner import Outcome

if TYPE_CHECKING:
    from server.functions.registry import FunctionSpec

__all__ = ["ANY_CALLER", "InstanceKey", "Instances", "QueryInstance", "QueryResult", "Subscriber"]

ANY_CALLER = ("*",)
InstanceKey = tuple[str, str, str | None, tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One run's result, serialised once however many subscribers receive it.

    `wire` is the tail of a QueryUpdated/QueryFailed modification after its queryId, ready to splice in, with the
    run's log lines; `key` is the same without them, what decides whether a re-run changed the result (a query
    that logs is not resent for its log lines alone). Without log lines both are one string.
    """

    ok: bool
    wire: str
    journal: str | None
    key: str = ""  # empty: the same as `wire`

    def same_as(self, other: QueryResult) -> bool:
        return (self.key or self.wire) == (other.key or other.wire)

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> QueryResult:
        journal = values.dumps(outcome.journal)
        if outcome.ok:
            head = f'"value":{values.dumps(outcome.value)},"logLines":'
            tail = f',"journal":{journal}}}'
        else:
            has_data, data = outcome.error_data
            extra = f',"errorData":{values.dumps(data)}' if has_data else ""
            tail = f',"journal":{journal}{extra}}}'
            # Each run has its own request id: the same failure again is no change either.
            key = f'"errorMessage":{values.dumps(outcome.describe_error(None))},"logLines":[]{tail}'
            head = f'"errorMessage":{values.dumps(outcome.error_message)},"logLines":'
            return cls(False, f"{head}{values.dumps(outcome.log_lines)}{tail}", outcome.journal, key)
        key = f"{head}[]{tail}"
        wire = f"{head}{values.dumps(outcome.log_lines)}{tail}" if outcome.log_lines else key
        return cls(True, wire, outcome.journal, key)

    def modification(self, query_id: int) -> str:
        kind = "QueryUpdated" if self.ok else "QueryFailed"
        return f'{{"type":"{kind}","queryId":{query_id},{self.wire}'


class Subscriber(Protocol):
    """What the hub pushes to: a sync session."""

    def deliver(self, ts: int, updates: list[tuple[int, QueryResult]]) -> None: ...


@dataclass(eq=False, slots=True)
class QueryInstance:
    id: int
    spec: FunctionSpec
    args: dict[str, Any]
    # The handler's keyword arguments, validated once when the instance was created.
    kwargs: dict[str, Any]
    args_json: str
    caller: Caller
    journal: str | None
    key: InstanceKey
    # token → (session, caller); a token names one subscription of one session.
    subscribers: dict[int, tuple[Subscriber, Caller]] = field(default_factory=dict)
    result: QueryResult | None = None
    reads_auth: bool = False


class Instances:
    """Every live instance, by id, by key and by subscription token.

    An instance is keyed by (function, args, journal, ANY_CALLER) while its runs ignore `ctx.auth`; once a run
    reads auth it is keyed by its own caller, and the subscribers of other callers move to instances of theirs.
    """

    def __init__(self, validate: Callable[[FunctionSpec, dict[str, Any]], dict[str, Any]]) -> None:
        self.by_id: dict[int, QueryInstance] = {}
        self._by_key: dict[InstanceKey, QueryInstance] = {}
        self._by_token: dict[int, QueryInstance] = {}
        self._next_id = 0
        self._validate = validate

    @property
    def subscriptions(self) -> int:
        return len(self._by_token)

    def attach(
        self, spec: FunctionSpec, session: Subscriber, token: int, args: Any, journal: str | None, caller: Caller
    ) -> QueryInstance:
        """Subscribe `token` to the instance it shares, made (and its arguments validated) if there is none."""
        args = args if isinstance(args, dict) else {}
        args_json = values.dumps(args)
        shared_key: InstanceKey = (spec.path, args_json, journal, ANY_CALLER)
        own_key: InstanceKey = (spec.path, args_json, journal, caller.cache_key)
        inst = self._by_key.get(shared_key) or self._by_key.get(own_key)
        if inst is None:
            kwargs = self._validate(spec, args)
            self._next_id += 1
            inst = QueryInstance(self._next_id, spec, args, kwargs, args_json, caller, journal, own_key)
            self.by_id[inst.id] = inst
            self._by_key[own_key] = inst
        inst.subscribers[token] = (session, caller)
        self._by_token[token] = inst
        return inst

    def detach(self, token: int) -> QueryInstance | None:
        """Unsubscribe `token`; returns its instance when that was the last subscriber (the instance is gone).

        An instance runs as one of its subscribers' callers (a shared one may be re-run, split by caller, at any
        round): when the one it ran as leaves, it runs as a remaining subscriber's from now on, never as a caller
        that no longer subscribes to it.
        """
        inst = self._by_token.pop(token, None)
        if inst is None:
            return None
        inst.subscribers.pop(token, None)
        if inst.subscribers:
            if all(caller is not inst.caller for _, caller in inst.subscribers.values()):
                inst.caller = next(iter(inst.subscribers.values()))[1]
            return None
        self._drop(inst)
        return inst

    def _drop(self, inst: QueryInstance) -> None:
        del self.by_id[inst.id]
        if self._by_key.get(inst.key) is inst:
            del self._by_key[inst.key]

    def rekey(self, inst: QueryInstance, reads_auth: bool) -> list[tuple[QueryInstance, int]]:
        """Share `inst` across callers while it ignores auth; split it by caller once it reads auth. Returns the
        (instance, token) pairs of subscriptions that moved to another instance. An instance left without
        subscribers is gone (not in `by_id`): its caller moved too, so no caller of its own subscribes to it."""
        inst.reads_auth = reads_auth
        path, args_json, journal, caller_key = inst.key
        if not reads_auth and caller_key != ANY_CALLER:
            shared = (path, args_json, journal, ANY_CALLER)
            if shared not in self._by_key:
                del self._by_key[inst.key]
                inst.key = shared
                self._by_key[shared] = inst
            return []
        if not reads_auth or caller_key != ANY_CALLER:
            return []
        del self._by_key[inst.key]
        inst.key = (path, args_json, journal, inst.caller.cache_key)
        self._by_key[inst.key] = inst
        moved = []
        for token, (session, caller) in list(inst.subscribers.items()):
            if caller.cache_key == inst.caller.cache_key:
                continue
            del inst.subscribers[token]
            del self._by_token[token]
            moved.append((self.attach(inst.spec, session, token, inst.args, journal, caller), token))
        if not inst.subscribers:
            self._drop(inst)
        return moved
