"""server/values.py: the Convex value encoding both ways, names, limits, JSON text."""

from __future__ import annotations

import base64
import math
import struct

import pytest

from server import values
from server.values import ConvexValueError, Int64, ValueTooDeepError, ValueTooLargeError, decode, encode

# ---------------------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(
    ("python", "wire"),
    [
        (None, None),
        (True, True),
        (False, False),
        ("héllo", "héllo"),
        (1.5, 1.5),
        (0.0, 0.0),
        (Int64(0), {"$integer": "AAAAAAAAAAA="}),
        (Int64(1), {"$integer": "AQAAAAAAAAA="}),
        (Int64(42), {"$integer": "KgAAAAAAAAA="}),
        (Int64(-1), {"$integer": "//////////8="}),
        (Int64(2**63 - 1), {"$integer": "/////////38="}),
        (Int64(-(2**63)), {"$integer": "AAAAAAAAAIA="}),
        (-0.0, {"$float": "AAAAAAAAAIA="}),
        (math.inf, {"$float": "AAAAAAAA8H8="}),
        (-math.inf, {"$float": "AAAAAAAA8P8="}),
        (b"", {"$bytes": ""}),
        (b"\x00\x10\x83", {"$bytes": "ABCD"}),
        ([1.0, "a", [None]], [1.0, "a", [None]]),
        ({"a": {"b": Int64(42)}}, {"a": {"b": {"$integer": "KgAAAAAAAAA="}}}),
    ],
)
def test_encode_and_decode_are_inverse(python: object, wire: object) -> None:
    assert encode(python) == wire
    decoded = decode(wire)
    assert decoded == python
    assert type(decoded) is type(python)


def test_nan_encodes_to_the_protocol_bytes_and_back() -> None:
    assert encode(math.nan) == {"$float": "AAAAAAAA+H8="}
    assert math.isnan(decode({"$float": "AAAAAAAA+H8="}))


def test_negative_zero_keeps_its_sign() -> None:
    decoded = decode({"$float": "AAAAAAAAAIA="})
    assert decoded == 0.0 and math.copysign(1.0, decoded) == -1.0


def test_python_int_goes_out_as_a_float64_number() -> None:
    assert encode(7) == 7.0 and type(encode(7)) is float
    assert encode(2**53) == float(2**53)
    assert encode(-(2**53)) == -float(2**53)
    assert values.dumps(encode({"n": 3})) == '{"n":3.0}'


def test_python_int_beyond_2_53_is_refused_with_a_hint() -> None:
    with pytest.raises(ConvexValueError, match="Int64"):
        encode({"n": 2**53 + 1})


def test_decoded_numbers_are_floats_even_when_integral() -> None:
    assert decode({"n": 3}) == {"n": 3.0}
    assert type(decode(3)) is float
    assert type(decode(values.loads("[1]"))[0]) is float


def test_int64_range_and_repr() -> None:
    assert repr(Int64(5)) == "Int64(5)"
    assert isinstance(Int64(5), int)
    with pytest.raises(ConvexValueError, match="out of range"):
        Int64(2**63)
    with pytest.raises(ConvexValueError, match="integral"):
        Int64(1.5)


def test_bytes_like_values_and_tuples() -> None:
    assert encode(bytearray(b"hi")) == {"$bytes": "aGk="}
    assert encode(memoryview(b"hi")) == {"$bytes": "aGk="}
    assert encode((1, 2)) == [1.0, 2.0]


@pytest.mark.parametrize("bad", [{1, 2}, object(), 1 + 2j])
def test_unsupported_types_are_refused(bad: object) -> None:
    with pytest.raises(ConvexValueError, match="not a Convex value|no set type"):
        encode({"x": bad})


def test_errors_name_the_path_to_the_bad_value() -> None:
    with pytest.raises(ConvexValueError) as caught:
        encode({"messages": [{"body": "ok"}, {"body": object()}]})
    assert str(caught.value).endswith("(at messages[1].body)")


# ---------------------------------------------------------------------------------------------- field names


@pytest.mark.parametrize("key", ["$x", "$integer", "é", "tab\there", "nul\x00", "del\x7f"])
def test_bad_field_names_are_refused_on_encode(key: str) -> None:
    with pytest.raises(ConvexValueError, match="field name"):
        encode({key: 1})


def test_dollar_key_message_says_what_to_do() -> None:
    with pytest.raises(ConvexValueError, match=r'field name "\$x" may not start with "\$"'):
        encode({"$x": 1})


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(ConvexValueError, match="keys must be strings"):
        encode({1: "a"})


def test_overlong_field_name_is_refused() -> None:
    encode({"a" * values.MAX_FIELD_NAME_LENGTH: 1})
    with pytest.raises(ConvexValueError, match="limit"):
        encode({"a" * (values.MAX_FIELD_NAME_LENGTH + 1): 1})


@pytest.mark.parametrize(
    "wire",
    [
        {"$x": 1},
        {"$integer": "KgAAAAAAAAA=", "other": 1},
        {"a": {"$bytes": "aGk=", "$float": "AAAAAAAA+H8="}},
        {"é": 1},
    ],
)
def test_decode_refuses_bad_keys_and_mixed_special_objects(wire: object) -> None:
    with pytest.raises(ConvexValueError, match="field name"):
        decode(wire)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ({"$float": base64.b64encode(struct.pack("<d", 1.5)).decode()}, "ordinary number"),
        ({"$integer": "KgAAAAAAAAA"}, "base64"),
        ({"$integer": "KgAAAA=="}, "8 base64-encoded"),
        ({"$integer": 42}, "base64 string"),
        ({"$bytes": "not base64!"}, "base64"),
    ],
)
def test_decode_refuses_malformed_special_objects(wire: object, message: str) -> None:
    with pytest.raises(ConvexValueError, match=message):
        decode(wire)


def test_decode_refuses_non_json_input() -> None:
    with pytest.raises(ConvexValueError, match="not a JSON value"):
        decode(b"raw")
    with pytest.raises(ConvexValueError, match="out of float64 range"):
        decode(10**400)


# ---------------------------------------------------------------------------------------------- clean JSON


def test_clean_json_is_lossy_and_readable() -> None:
    value = {
        "i": Int64(42),
        "neg": Int64(-(2**63)),
        "b": b"\x00\x10\x83",
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
        "nz": -0.0,
        "n": 3,
        "list": [Int64(1), None, "s", True],
    }
    assert encode_clean(value) == {
        "i": "42",
        "neg": "-9223372036854775808",
        "b": "ABCD",
        "nan": "NaN",
        "inf": "Infinity",
        "ninf": "-Infinity",
        "nz": -0.0,
        "n": 3.0,
        "list": ["1", None, "s", True],
    }
    assert values.dumps(encode_clean(value)).count("NaN") == 1  # the string, never a bare NaN


def encode_clean(value: object) -> object:
    return values.encode_clean_json(value)


def test_clean_json_still_refuses_bad_keys() -> None:
    with pytest.raises(ConvexValueError, match="field name"):
        values.encode_clean_json({"$x": 1})


# ---------------------------------------------------------------------------------------------- limits


def nested(depth: int) -> object:
    value: object = 1.0
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_up_to_the_limit_is_accepted_and_beyond_refused() -> None:
    assert decode(encode(nested(values.MAX_DEPTH))) == nested(values.MAX_DEPTH)
    with pytest.raises(ValueTooDeepError, match="64 levels"):
        encode(nested(values.MAX_DEPTH + 1))
    with pytest.raises(ValueTooDeepError):
        decode(nested(values.MAX_DEPTH + 1))


def test_depth_limit_is_overridable_per_call() -> None:
    encode(nested(3), max_depth=3)
    with pytest.raises(ValueTooDeepError):
        encode(nested(4), max_depth=3)
    with pytest.raises(ValueTooDeepError):
        decode({"a": {"b": {}}}, max_depth=2)


def test_value_size_follows_convex_accounting() -> None:
    assert values.value_size(None) == 1
    assert values.value_size(True) == 1
    assert values.value_size(1.5) == 9
    assert values.value_size(Int64(1)) == 9
    assert values.value_size("abc") == 5
    assert values.value_size(b"abc") == 5
    assert values.value_size([1.0, None]) == 2 + 9 + 1
    assert values.value_size({"ab": 1.0}) == 2 + 2 + 1 + 9


def test_check_size_returns_the_size_or_refuses_with_a_clear_message() -> None:
    doc = {"body": "x" * 1000}
    assert values.check_size(doc, values.MAX_DOCUMENT_SIZE_BYTES, "document") == values.value_size(doc)
    big = {"body": "x" * values.MAX_DOCUMENT_SIZE_BYTES}
    with pytest.raises(ValueTooLargeError, match=r"document in table 'messages' is too large \(1\.0 MiB > maximum"):
        values.check_size(big, values.MAX_DOCUMENT_SIZE_BYTES, "document in table 'messages'")
    with pytest.raises(ValueTooLargeError, match=r"\(12 B > maximum size 10 B\)"):
        values.check_size("x" * 10, 10, "s")


def test_limit_errors_are_value_errors() -> None:
    assert issubclass(ValueTooLargeError, ValueError)
    assert issubclass(ValueTooDeepError, ValueError)


# ---------------------------------------------------------------------------------------------- JSON text


def test_dumps_never_writes_nan_or_turns_it_into_null() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConvexValueError, match="encode"):
            values.dumps({"x": [None, bad]})
    assert values.dumps({"x": None, "y": [1.5]}) == '{"x":null,"y":[1.5]}'
    assert values.dumps(encode({"x": math.nan})) == '{"x":{"$float":"AAAAAAAA+H8="}}'


def test_dumps_and_loads_round_trip_text() -> None:
    message: dict[str, object] = {"type": "Transition", "modifications": [], "journal": None, "s": "ü"}
    assert values.loads(values.dumps(message)) == message
    assert values.loads(values.dumps_bytes(message)) == message


def test_loads_refuses_nan_literals_and_garbage() -> None:
    for text in ("[NaN]", "{", "[Infinity]"):
        with pytest.raises(ConvexValueError, match="invalid JSON"):
            values.loads(text)


def test_dumps_refuses_unserialisable_objects() -> None:
    with pytest.raises(ConvexValueError, match="cannot serialise"):
        values.dumps({"x": object()})


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("camel", "snake"),
    [
        ("parentGenerationId", "parent_generation_id"),
        ("agentSessions", "agent_sessions"),
        ("_id", "_id"),
        ("_creationTime", "_creation_time"),
        ("body", "body"),
        ("field2Name", "field2_name"),
        ("a", "a"),
        ("x1", "x1"),
    ],
)
def test_names_convert_both_ways(camel: str, snake: str) -> None:
    assert values.to_snake(camel) == snake
    assert values.to_camel(snake) == camel


@pytest.mark.parametrize(
    "camel", ["projectRedesigns", "videoUrl", "isDone", "stepIndex", "_creationTime", "userID", "aB1cD"]
)
def test_camel_names_round_trip_exactly(camel: str) -> None:
    assert values.to_camel(values.to_snake(camel)) == camel


def test_row_to_document_drops_null_columns_and_renames() -> None:
    row = {"_id": "abc", "_creation_time": 1.0, "parent_generation_id": None, "prompt_text": "hi"}
    assert values.row_to_document(row) == {"_id": "abc", "_creationTime": 1.0, "promptText": "hi"}


def test_module_declares_its_surface() -> None:
    for name in values.__all__:
        assert hasattr(values, name), name
