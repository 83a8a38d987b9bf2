"""The fake Anthropic API works with the real anthropic SDK."""

from __future__ import annotations

import time

import anthropic
import pytest

try:
    from tests.fakes.anthropic_api import FakeScript, run_fake_anthropic
except ImportError:  # rootdir not importable: tests/fakes is on sys.path instead
    from anthropic_api import FakeScript, run_fake_anthropic  # type: ignore[no-redef]

MODEL = "claude-fake"
MESSAGES = [{"role": "user", "content": "Say hello"}]


def make_client(fake, **kw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="test", max_retries=0, **kw)


async def test_non_streaming_create() -> None:
    async with run_fake_anthropic(FakeScript(chunks=["Hello", " world"])) as fake:
        client = make_client(fake)
        msg = await client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
        await client.close()
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Hello world"
    assert msg.stop_reason == "end_turn"
    assert msg.model == MODEL
    assert msg.usage.output_tokens == 2
    assert len(fake.requests) == 1
    body = fake.requests[0]
    assert body["model"] == MODEL and body["max_tokens"] == 50 and body["messages"] == MESSAGES
    assert not body.get("stream")
    assert fake.api_keys == ["test"]


async def test_streaming_text_chunks_and_final_message() -> None:
    chunks = ["Hel", "lo ", "wor", "ld"]
    async with run_fake_anthropic(FakeScript(chunks=chunks, chunk_delay_s=0.05)) as fake:
        client = make_client(fake)
        got: list[str] = []
        start = time.monotonic()
        async with client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream:
            async for text in stream.text_stream:
                got.append(text)
            final = await stream.get_final_message()
        elapsed = time.monotonic() - start
        await client.close()
    assert got == chunks
    # the chunks really are spaced out by the configured delay (a lower bound:
    # the SDK's first use adds latency to the first chunk, so gaps can't be compared)
    assert elapsed >= 0.05 * (len(chunks) - 1)
    assert final.content[0].text == "Hello world"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(chunks)
    assert fake.requests[0]["stream"] is True


async def test_raw_stream_event_sequence() -> None:
    async with run_fake_anthropic(FakeScript(chunks=["a", "b"])) as fake:
        client = make_client(fake)
        stream = await client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES, stream=True)
        types = [event.type async for event in stream]
        await client.close()
    assert types == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_overloaded_529() -> None:
    async with run_fake_anthropic(FakeScript(mode="error", error_status=529)) as fake:
        client = make_client(fake)
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
        await client.close()
    assert isinstance(info.value, anthropic.OverloadedError)
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"


async def test_api_error_500_then_success_with_script_list() -> None:
    script = [FakeScript(mode="error", error_status=500, error_message="boom"), FakeScript(chunks=["ok"])]
    async with run_fake_anthropic(script) as fake:
        client = make_client(fake)
        with pytest.raises(anthropic.InternalServerError) as info:
            await client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
        msg = await client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
        await client.close()
    assert info.value.status_code == 500
    assert msg.content[0].text == "ok"
    assert len(fake.requests) == 2


async def test_hang_mode_times_out() -> None:
    async with run_fake_anthropic(FakeScript(mode="hang")) as fake:
        client = make_client(fake, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(anthropic.APITimeoutError):
            await client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
        elapsed = time.monotonic() - start
        await client.close()
    assert 0.4 <= elapsed < 5
    assert len(fake.requests) == 1


async def test_stream_stalls_mid_way_and_times_out() -> None:
    async with run_fake_anthropic(FakeScript(chunks=["a", "b", "c"], hang_after_chunks=1)) as fake:
        client = make_client(fake, timeout=0.5)
        got: list[str] = []
        # A read timeout after the headers is not wrapped by the SDK (2.12):
        # it surfaces as the transport's ReadTimeout (httpx2.ReadTimeout), not
        # anthropic.APITimeoutError, which only covers the request itself.
        with pytest.raises(Exception) as info:
            async with client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream:
                async for text in stream.text_stream:
                    got.append(text)
        await client.close()
    assert "Timeout" in type(info.value).__name__, repr(info.value)
    assert got == ["a"]


async def test_stream_error_event_mid_way() -> None:
    async with run_fake_anthropic(FakeScript(chunks=["a", "b", "c"], stream_error_after=2)) as fake:
        client = make_client(fake)
        got: list[str] = []
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream:
                async for text in stream.text_stream:
                    got.append(text)
        await client.close()
    assert got == ["a", "b"]


async def test_x_api_key_header_and_required_key() -> None:
    import httpx

    async with run_fake_anthropic(FakeScript(chunks=["hi"], require_api_key="sekrit")) as fake:
        async with httpx.AsyncClient(base_url=fake.base_url) as http:
            ok = await http.post(
                "/v1/messages",
                headers={"x-api-key": "sekrit", "anthropic-version": "2023-06-01"},
                json={"model": MODEL, "max_tokens": 5, "messages": MESSAGES},
            )
            bad = await http.post(
                "/v1/messages",
                headers={"x-api-key": "wrong"},
                json={"model": MODEL, "max_tokens": 5, "messages": MESSAGES},
            )
            missing = await http.post(
                "/v1/messages", headers={"x-api-key": "sekrit"}, json={"model": MODEL, "messages": MESSAGES}
            )
        client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
        await client.close()
    assert ok.status_code == 200 and ok.json()["content"][0]["text"] == "hi"
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "invalid_request_error"
    assert fake.api_keys == ["sekrit", "wrong", "sekrit", "wrong"]
