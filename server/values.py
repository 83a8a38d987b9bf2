"""Convex values ⇄ Python, camelCase ⇄ snake_case names, and value limits: the edge every value crosses.

Pure (no I/O): the HTTP API and the sync socket call `decode` on arguments and `encode` on results; the database
layer calls `row_to_document` / `document_to_columns`. The wire encoding is Convex's `convex_encoded_json`
(protocol §5); `encode_clean_json` is the lossy `format: "json"` of the HTTP API (protocol §1).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, Protocol, SupportsIndex, SupportsInt, TypeAlias

import orjson

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_SIZE_BYTES",
    "MAX_ELEMENTS",
    "MAX_FIELD_NAME_LENGTH",
    "MAX_SAFE_INTEGER",
    "ConvexValueError",
    "Int64",
    "JSONValue",
    "ValueTooDeepError",
    "ValueTooLargeError",
    "check_size",
    "check_storable",
    "decode",
    "dumps",
    "dumps_bytes",
    "encode",
    "encode_clean_json",
    "loads",
    "row_to_document",
    "to_camel",
    "to_snake",
    "validate_field_name",
    "value_size",
]

JSONValue: TypeAlias = "None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]"

# Limits. Functions take them as keyword arguments; `None` means "the module constant at call time", so a
# deployment may also lower them once at startup (config.py). Values follow Convex (be:crates/value/src/size.rs).
MAX_DEPTH = 64  # nested arrays/objects; a scalar has depth 0, a list of scalars depth 1
MAX_FIELD_NAME_LENGTH = 1024
MAX_DOCUMENT_SIZE_BYTES = 1 << 20  # one stored document
MAX_SAFE_INTEGER = 2**53  # a Python int beyond ±2**53 has no exact float64; use Int64
# Values (scalars, arrays, objects) in one message: `loads` refuses more before building any of them, so an 8 MiB
# body of tiny objects costs a count, not the hundreds of MB their Python objects would take.
MAX_ELEMENTS = 1 << 18

_MIN_INT64 = -(2**63)
_MAX_INT64 = 2**63 - 1
_SPECIAL_KEYS = frozenset({"$integer", "$float", "$bytes"})


class ConvexValueError(ValueError):
    """A value that Convex cannot represent, or a malformed encoded value.

    `path` locates the offending part (`messages[3].body`); it is filled in while the error unwinds, so the
    happy path pays nothing for it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []

    def __str__(self) -> str:
        return f"{self.reason} (at {_format_path(self.path)})" if self.path else self.reason


class ValueTooDeepError(ConvexValueError):
    """More nested arrays/objects than the limit: refused before it can exhaust the stack."""


class ValueTooLargeError(ConvexValueError):
    """A value over its size limit (document, arguments, result)."""


class Int64(int):
    """A Convex int64 (JS `bigint`, Python client `ConvexInt64`).

    Plain Python ints go out as float64 numbers, as the official clients send them; only an `Int64` is
    encoded as `{"$integer": …}`, and decoding `$integer` gives an `Int64`, so the distinction survives a round
    trip. Arithmetic on an `Int64` gives a plain int: wrap the result again to keep it an int64.
    """

    __slots__ = ()

    def __new__(cls, value: str | bytes | SupportsInt | SupportsIndex = 0) -> Int64:
        if isinstance(value, float) and not value.is_integer():
            raise ConvexValueError(f"Int64 needs an integral value, got {value!r}")
        number = int.__new__(cls, value)
        if not _MIN_INT64 <= number <= _MAX_INT64:
            raise ConvexValueError(f"Int64 out of range: {int(number)} is outside [-2**63, 2**63 - 1]")
        return number

    def __repr__(self) -> str:
        return f"Int64({int(self)})"


# ---------------------------------------------------------------------------------------------- encoding


def encode(value: Any, *, max_depth: int | None = None) -> JSONValue:
    """Python value → `convex_encoded_json`, ready for `dumps`.

    Raises:
        ConvexValueError: an unsupported type, an int beyond ±2**53, or a bad field name.
        ValueTooDeepError: nesting beyond `max_depth` (default `MAX_DEPTH`).
    """
    return _encode(value, 0, MAX_DEPTH if max_depth is None else max_depth, clean=False)


def encode_clean_json(value: Any, *, max_depth: int | None = None) -> JSONValue:
    """Python value → Convex's lossy clean JSON (`format: "json"`, be:crates/value/src/export.rs).

    Int64 → decimal string, bytes → base64 string, NaN/±Infinity → `"NaN"`/`"Infinity"`/`"-Infinity"`,
    -0.0 stays a number. Same errors as `encode`.
    """
    return _encode(value, 0, MAX_DEPTH if max_depth is None else max_depth, clean=True)


def _encode(value: Any, depth: int, max_depth: int, *, clean: bool) -> JSONValue:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, float):
        return _encode_float(value, clean)
    if isinstance(value, Int64):
        return str(int(value)) if clean else {"$integer": _b64(struct.pack("<q", value))}
    if isinstance(value, int):
        return _int_to_float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        encoded = _b64(bytes(value))
        return encoded if clean else {"$bytes": encoded}
    if isinstance(value, Mapping):
        return _encode_object(value, _enter(depth, max_depth), max_depth, clean)
    if isinstance(value, (list, tuple)):
        return _encode_array(value, _enter(depth, max_depth), max_depth, clean)
    raise ConvexValueError(_unsupported_type(value))


def _encode_object(value: Mapping[Any, Any], depth: int, max_depth: int, clean: bool) -> dict[str, JSONValue]:
    out: dict[str, JSONValue] = {}
    for key, item in value.items():
        validate_field_name(key)
        try:
            out[key] = _encode(item, depth, max_depth, clean=clean)
        except ConvexValueError as error:
            error.path.insert(0, key)
            raise
    return out


def _encode_array(value: Iterable[Any], depth: int, max_depth: int, clean: bool) -> list[JSONValue]:
    out: list[JSONValue] = []
    for index, item in enumerate(value):
        try:
            out.append(_encode(item, depth, max_depth, clean=clean))
        except ConvexValueError as error:
            error.path.insert(0, index)
            raise
    return out


def _encode_float(value: float, clean: bool) -> JSONValue:
    if _is_plain_float(value):
        return value
    if clean:
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value  # -0.0 is an ordinary JSON number in clean JSON
    return {"$float": _b64(struct.pack("<d", value))}


def _int_to_float(value: int) -> float:
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return float(value)
    raise ConvexValueError(
        f"integer {value} is outside the float64-safe range ±2**53; wrap it in values.Int64 to send an int64"
    )


def _unsupported_type(value: Any) -> str:
    kind = type(value).__name__
    if isinstance(value, (set, frozenset)):
        return f"Convex has no set type (got {kind}); use a list"
    hint = "; call .model_dump() first" if hasattr(value, "model_dump") else ""
    return (
        f"{kind} is not a Convex value: use None, bool, int, float, str, bytes, Int64, list or dict with str keys{hint}"
    )


# ---------------------------------------------------------------------------------------------- decoding


def decode(value: Any, *, max_depth: int | None = None, encoded: bool = True) -> Any:
    """`convex_encoded_json` (already parsed by `loads`) → Python value; with `encoded=False`, plain JSON (the HTTP
    API's `format: "json"`), checked by the same rules but with no special objects.

    Every JSON number becomes a float, as in Convex (an integral float stays a float; pydantic can coerce).
    Only an object with exactly one key `$integer`/`$float`/`$bytes` is special.

    Raises:
        ConvexValueError: malformed special objects, `$`-prefixed or non-ASCII keys, non-finite numbers, a string
            holding NUL (PostgreSQL's text cannot store U+0000, so Ripple refuses it where it enters).
        ValueTooDeepError: nesting beyond `max_depth` (default `MAX_DEPTH`).
    """
    return _decode(value, 0, MAX_DEPTH if max_depth is None else max_depth, encoded)


def _decode(value: Any, depth: int, max_depth: int, encoded: bool = True) -> Any:
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise ConvexValueError(_NUL_MESSAGE)
        return value
    if value is None or kind is bool:
        return value
    if kind is float or kind is int:
        return _decode_number(value)
    if kind is list:
        return _decode_array(value, _enter(depth, max_depth), max_depth, encoded)
    if kind is dict:
        if encoded and len(value) == 1:
            key = next(iter(value))
            if key in _SPECIAL_KEYS:
                return _decode_special(key, value[key])
        return _decode_object(value, _enter(depth, max_depth), max_depth, encoded)
    raise ConvexValueError(f"{kind.__name__} is not a JSON value; decode() takes the output of loads()")


def _decode_number(value: float) -> float:
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConvexValueError(f'JSON number {value!r} is out of float64 range; send it as {{"$float": …}}')
    return number


def _decode_array(value: list[Any], depth: int, max_depth: int, encoded: bool) -> list[Any]:
    out = []
    for index, item in enumerate(value):
        try:
            out.append(_decode(item, depth, max_depth, encoded))
        except ConvexValueError as error:
            error.path.insert(0, index)
            raise
    return out


def _decode_object(value: dict[str, Any], depth: int, max_depth: int, encoded: bool) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        validate_field_name(key)
        try:
            out[key] = _decode(item, depth, max_depth, encoded)
        except ConvexValueError as error:
            error.path.insert(0, key)
            raise
    return out


def _decode_special(key: str, payload: Any) -> Int64 | float | bytes:
    if key == "$bytes":
        return _b64_decode(key, payload)
    raw = _b64_decode(key, payload)
    if len(raw) != 8:
        raise ConvexValueError(f'{{"{key}": …}} must hold 8 base64-encoded little-endian bytes, got {len(raw)}')
    if key == "$integer":
        return Int64(struct.unpack("<q", raw)[0])
    number: float = struct.unpack("<d", raw)[0]
    if _is_plain_float(number):
        raise ConvexValueError(f'{{"$float": …}} holds the ordinary number {number!r}; send it as a plain JSON number')
    return number


def _b64_decode(key: str, payload: Any) -> bytes:
    if not isinstance(payload, str):
        raise ConvexValueError(f'{{"{key}": …}} must hold a base64 string, got {type(payload).__name__}')
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise ConvexValueError(f'{{"{key}": …}} holds invalid padded standard base64 ({error})') from None


# ---------------------------------------------------------------------------------------------- shared checks


def validate_field_name(name: Any) -> None:
    """Refuse a key the JS client would throw on (js:src/values/value.ts): `$` prefix, non-ASCII, control chars.

    Raises:
        ConvexValueError: naming the key and the rule it breaks.
    """
    if isinstance(name, str) and name.isascii() and name.isprintable() and not name.startswith("$"):
        if len(name) <= MAX_FIELD_NAME_LENGTH:
            return
        raise ConvexValueError(
            f"field name {name[:40]!r}… is {len(name)} characters long; the limit is {MAX_FIELD_NAME_LENGTH}"
        )
    if not isinstance(name, str):
        raise ConvexValueError(f"object keys must be strings, got {type(name).__name__} {name!r}")
    if name.startswith("$"):
        raise ConvexValueError(f'field name "{name}" may not start with "$" (reserved for encoded values); rename it')
    raise ConvexValueError(f"field name {name!r} may contain only printable ASCII characters; rename it")


_NUL_MESSAGE = "strings may not contain NUL (U+0000): PostgreSQL cannot store it; remove or replace it"


def check_storable(value: Any, what: str, *, max_depth: int | None = None) -> None:
    """Refuse, before it is written, a value that PostgreSQL could store but Ripple could not read back as a
    Convex value: a `$`-prefixed or unprintable field name, a string holding NUL, nesting beyond `max_depth`.

    Raises:
        ConvexValueError: naming `what` and the path inside it.
    """
    try:
        _check_storable(value, 0, MAX_DEPTH if max_depth is None else max_depth)
    except ConvexValueError as error:
        error.reason = f"{what}: {error.reason}"
        raise


def _check_storable(value: Any, depth: int, max_depth: int) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ConvexValueError(_NUL_MESSAGE)
    elif isinstance(value, Mapping):
        depth = _enter(depth, max_depth)
        for key, item in value.items():
            validate_field_name(key)
            try:
                _check_storable(item, depth, max_depth)
            except ConvexValueError as error:
                error.path.insert(0, key)
                raise
    elif isinstance(value, (list, tuple)):
        depth = _enter(depth, max_depth)
        for index, item in enumerate(value):
            try:
                _check_storable(item, depth, max_depth)
            except ConvexValueError as error:
                error.path.insert(0, index)
                raise


def _enter(depth: int, max_depth: int) -> int:
    depth += 1
    if depth > max_depth:
        raise ValueTooDeepError(f"value is nested more than {max_depth} levels deep; flatten it")
    return depth


def _is_plain_float(value: float) -> bool:
    """Finite and not -0.0: the floats a JSON number carries exactly."""
    return math.isfinite(value) and (value != 0.0 or math.copysign(1.0, value) > 0)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _format_path(path: list[str | int]) -> str:
    parts = []
    for step in path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", step):
            parts.append(f".{step}")
        else:
            parts.append(f"[{step!r}]")
    return "".join(parts).lstrip(".")


# ---------------------------------------------------------------------------------------------- size


def value_size(value: Any) -> int:
    """Convex's notion of a value's size in bytes (be:crates/value/src/size.rs), close to its JSON length.

    Scalars: null/bool 1, numbers 9; strings and bytes their length + 2; arrays 2 + items; objects
    2 + (key + 1 + value) per field. Works on Python values and on their encoded form alike.
    """
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return 9
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) + 2
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value) + 2
    if isinstance(value, Mapping):
        return 2 + sum(len(str(key)) + 1 + value_size(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return 2 + sum(value_size(item) for item in value)
    raise ConvexValueError(_unsupported_type(value))


def check_size(value: Any, limit: int, what: str) -> int:
    """Return `value_size(value)`, or refuse a value over `limit` (e.g. `MAX_DOCUMENT_SIZE_BYTES`).

    `what` names the value in the message ("document in table 'messages'", "result of 'messages:list'").

    Raises:
        ValueTooLargeError: the size is over `limit`.
    """
    size = value_size(value)
    if size > limit:
        raise ValueTooLargeError(
            f"{what} is too large ({_human(size)} > maximum size {_human(limit)}); store less per value or split it"
        )
    return size


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1 << 20:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1 << 20):.1f} MiB"


# ---------------------------------------------------------------------------------------------- JSON text


def dumps(obj: Any) -> str:
    """JSON text for `obj`; never a bare NaN/Infinity (the clients reject them), never `null` in their place.

    Raises:
        ConvexValueError: a non-finite float (encode it first) or a type JSON cannot hold.
    """
    return dumps_bytes(obj).decode("utf-8")


def dumps_bytes(obj: Any) -> bytes:
    """`dumps` as UTF-8 bytes, for HTTP bodies (saves a decode/encode)."""
    try:
        data = orjson.dumps(obj)
    except orjson.JSONEncodeError as error:
        raise ConvexValueError(f"cannot serialise to JSON: {error}") from None
    # orjson writes NaN/±Infinity as `null` instead of failing; without a `null` token there was none to find.
    if b"null" in data:
        _refuse_non_finite(obj)
    return data


def _refuse_non_finite(obj: Any) -> None:
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ConvexValueError(f'cannot serialise {obj!r} as JSON; encode() it as {{"$float": …}} first')
    elif isinstance(obj, dict):
        for key, item in obj.items():
            try:
                _refuse_non_finite(item)
            except ConvexValueError as error:
                error.path.insert(0, key)
                raise
    elif isinstance(obj, (list, tuple)):
        for index, item in enumerate(obj):
            try:
                _refuse_non_finite(item)
            except ConvexValueError as error:
                error.path.insert(0, index)
                raise


def loads(data: str | bytes, *, max_elements: int | None = None) -> Any:
    """Parse JSON text (strict: no NaN literals). Numbers stay int/float here; `decode` makes them floats.

    Text from outside is counted first (`max_elements`, default `MAX_ELEMENTS`): an over-limit message is refused
    before any of its values is built.

    Raises:
        ConvexValueError: the text is not valid JSON, or holds more values than the limit.
    """
    limit = MAX_ELEMENTS if max_elements is None else max_elements
    raw = data.encode() if isinstance(data, str) else data
    if _elements_at_most(raw) > limit and _elements(raw) > limit:
        raise ValueTooLargeError(
            f"the message holds more than {limit} values (arrays, objects and scalars); send fewer per message"
        )
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise ConvexValueError(f"invalid JSON: {error}") from None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _elements_at_most(raw: bytes) -> int:
    """An upper bound on the values in a JSON text: every value but the first follows a comma or opens a container
    (commas and brackets inside strings count too, hence "at most"). Counted in C, at memory speed."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1


def _elements(raw: bytes) -> int:
    """The same count with strings blanked out: exact for valid JSON. Only run when the bound is over the limit."""
    return _elements_at_most(_JSON_STRING.sub(b'""', raw))


# ---------------------------------------------------------------------------------------------- names


@lru_cache(maxsize=4096)
def to_snake(name: str) -> str:
    """Convex field/table name → PostgreSQL column/table name: `parentGenerationId` → `parent_generation_id`.

    Leading underscores are kept (`_creationTime` → `_creation_time`). Inverse of `to_camel` for camelCase
    names that contain no `_` after their leading underscores. Index names (`by_batchId`) are not names for
    this function: they keep their Convex spelling.
    """
    out = []
    for index, char in enumerate(name):
        if "A" <= char <= "Z":
            if index > 0 and name[index - 1] != "_":
                out.append("_")
            out.append(char.lower())
        else:
            out.append(char)
    return "".join(out)


_CAMEL_STEP = re.compile(r"_([a-z])")


@lru_cache(maxsize=4096)
def to_camel(name: str) -> str:
    """PostgreSQL column/table name → Convex name: `agent_sessions` → `agentSessions`, `_id` → `_id`."""
    stripped = name.lstrip("_")
    prefix = name[: len(name) - len(stripped)]
    return prefix + _CAMEL_STEP.sub(lambda match: match.group(1).upper(), stripped)


class _Row(Protocol):
    def items(self) -> Iterable[tuple[str, Any]]: ...


def row_to_document(row: Mapping[str, Any] | _Row) -> dict[str, Any]:
    """A table row (asyncpg `Record` or dict) → Convex document: camelCase fields, NULL columns absent."""
    return {to_camel(column): value for column, value in row.items() if value is not None}
