"""`QueryInstance`: one query execution shared by every identical subscription, and its latest result.

Identical means same function, same arguments and same journal; and, once a run has shown that the query
looks at `ctx.auth`, the same caller. An instance that never read auth is shared across callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from server import values
from server.functions.context import Caller
from server.functions.runner import Outcome

if TYPE_CHECKING:
    from server.functions.registry import FunctionSpec

__all__ = ["ANY_CALLER", "InstanceKey", "QueryInstance", "QueryResult", "Subscriber"]

ANY_CALLER = ("*",)
InstanceKey = tuple[str, str, str | None, tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One run's result, serialised once however many subscribers receive it.

    `wire` is the tail of a QueryUpdated/QueryFailed modification after its queryId, ready to splice in.
    """

    ok: bool
    wire: str
    journal: str | None

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> QueryResult:
        journal = values.dumps(outcome.journal)
        if outcome.ok:
            wire = f'"value":{values.dumps(outcome.value)},"logLines":[],"journal":{journal}}}'
            return cls(True, wire, outcome.journal)
        message = values.dumps(outcome.error_message)
        has_data, data = outcome.error_data
        extra = f',"errorData":{values.dumps(data)}' if has_data else ""
        return cls(False, f'"errorMessage":{message},"logLines":[],"journal":{journal}{extra}}}', outcome.journal)

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
