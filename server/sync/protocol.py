"""The Convex sync protocol's messages: client messages validated at the edge, server messages serialised here.

Timestamps travel as 8 little-endian bytes in padded base64; ids and versions as JSON integers. A Transition's
query results arrive pre-serialised from the hub (one serialisation per result, however many subscribers).
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from server import values

__all__ = [
    "ClientMessage",
    "StateVersion",
    "TransitionMessage",
    "decode_ts",
    "encode_ts",
    "parse_client_message",
]


@lru_cache(maxsize=1024)
def encode_ts(ts: int) -> str:
    """Cached: one round's ts goes out to every session it updates."""
    return base64.b64encode(struct.pack("<Q", ts)).decode()


def decode_ts(text: str) -> int:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 8:
        raise ValueError(f"a timestamp is 8 bytes of base64, got {len(raw)} bytes")
    return int(struct.unpack("<Q", raw)[0])


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Connect(_Message):
    type: Literal["Connect"]
    sessionId: str = Field(max_length=256, pattern=r"^[^\x00]*$")  # official clients send a UUID
    connectionCount: int = 0
    lastCloseReason: str | None = None
    clientTs: float | None = None
    maxObservedTimestamp: str | None = None


class AddQuery(_Message):
    type: Literal["Add"]
    queryId: int
    udfPath: str
    args: list[Any] = Field(default_factory=list)
    journal: str | None = None
    componentPath: str | None = None


class RemoveQuery(_Message):
    type: Literal["Remove"]
    queryId: int


class ModifyQuerySet(_Message):
    type: Literal["ModifyQuerySet"]
    baseVersion: int
    newVersion: int
    modifications: list[Annotated[AddQuery | RemoveQuery, Field(discriminator="type")]]


class _FunctionCall(_Message):
    requestId: int
    udfPath: str
    args: list[Any] = Field(default_factory=list)
    componentPath: str | None = None


class Mutation(_FunctionCall):
    type: Literal["Mutation"]


class Action(_FunctionCall):
    type: Literal["Action"]


class Authenticate(_Message):
    type: Literal["Authenticate"]
    tokenType: Literal["User", "Admin", "None"]
    value: str | None = None
    baseVersion: int
    impersonating: Any = None


class Event(_Message):
    type: Literal["Event"]


ClientMessage = Annotated[
    Connect | ModifyQuerySet | Mutation | Action | Authenticate | Event, Field(discriminator="type")
]
_client_message: TypeAdapter[Any] = TypeAdapter(ClientMessage)


def parse_client_message(text: str) -> Any:
    """Parse one frame; raises ValueError naming what is wrong with it."""
    try:
        raw = values.loads(text)
    except values.ValueTooLargeError as exc:
        raise ValueError(str(exc)) from None
    except Exception:
        raise ValueError("the frame is not JSON; send one JSON message per text frame") from None
    try:
        return _client_message.validate_python(raw)
    except ValidationError as exc:
        kind = raw.get("type") if isinstance(raw, dict) else None
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"malformed {kind or 'message'}: {where}: {first['msg']}") from None


def args_object(args: list[Any]) -> dict[str, Any]:
    """Convex sends function arguments as `[ {one object} ]`."""
    if len(args) != 1 or not isinstance(args[0], dict):
        raise ValueError("args must be a one-element array holding an object")
    return values.decode(args[0])  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class StateVersion:
    query_set: int = 0
    identity: int = 0
    ts: int = 0

    def wire(self) -> str:
        return _version_wire(self.query_set, self.identity, self.ts)


@lru_cache(maxsize=4096)
def _version_wire(query_set: int, identity: int, ts: int) -> str:
    return f'{{"querySet":{query_set},"identity":{identity},"ts":"{encode_ts(ts)}"}}'


@dataclass(slots=True)
class TransitionMessage:
    """A Transition waiting in a session's outbox; later ones merge into it while it is unsent."""

    start: StateVersion
    end: StateVersion
    # queryId → pre-serialised modification; insertion order is send order, the latest per query wins.
    modifications: dict[int, str] = field(default_factory=dict)

    def merge(self, later: TransitionMessage) -> None:
        self.end = later.end
        for query_id, modification in later.modifications.items():
            self.modifications.pop(query_id, None)
            self.modifications[query_id] = modification

    def wire(self, server_ts_ns: int, clock_skew_ms: int) -> str:
        mods = ",".join(self.modifications.values())
        return (
            f'{{"type":"Transition","startVersion":{self.start.wire()},"endVersion":{self.end.wire()},'
            f'"modifications":[{mods}],"clientClockSkew":{clock_skew_ms},"serverTs":{server_ts_ns}}}'
        )


def query_removed(query_id: int) -> str:
    return f'{{"type":"QueryRemoved","queryId":{query_id}}}'


def mutation_response(
    kind: Literal["MutationResponse", "ActionResponse"],
    request_id: int,
    *,
    ok: bool,
    result: Any,
    ts: int | None = None,
    error_data: tuple[bool, Any] = (False, None),
    log_lines: list[str] | None = None,
) -> str:
    message: dict[str, Any] = {
        "type": kind,
        "requestId": request_id,
        "success": ok,
        "result": result,
        "logLines": log_lines or [],
    }
    if ok and ts is not None:
        message["ts"] = encode_ts(ts)
    if not ok and error_data[0]:
        message["errorData"] = error_data[1]
    return values.dumps(message)


def auth_error(error: str, base_version: int, *, attempted: bool) -> str:
    return values.dumps(
        {"type": "AuthError", "error": error, "baseVersion": base_version, "authUpdateAttempted": attempted}
    )


def fatal_error(error: str) -> str:
    return values.dumps({"type": "FatalError", "error": error})


PING = '{"type":"Ping"}'
