"""generateAnimation (seeds 000, 001) against a fake Anthropic API over real HTTP: generate, refine, refineAndPersist.

Claude's settings come from the environment on every call (`claude_settings()`), so tests point them at the fake
with monkeypatched environment variables. One Ripple server serves the module; each test signs in as its own users.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

import tests.support.testing_app  # noqa: F401  (registers testing:uploadUrl)
from functions.claude import extract_code
from functions.generate_animation import GENERATION_SYSTEM_PROMPT, REFINEMENT_SYSTEM_PROMPT
from functions.reference_images import MAX_IMAGE_BYTES
from server.errors import AuthRequired, ConvexError, IdError, RippleError
from tests.fakes.anthropic_api import FakeAnthropic, FakeScript, ReceivedImage, run_fake_anthropic
from tests.support.images import png
from tests.support.server import RippleServer

API_KEY = "test-key"
MODEL = "claude-fake"
CODE = "export const MyAnimation = () => {\n  return null;\n};"
REPLY = [
    "Here is the animation:\n",
    "```tsx\n",
    "export const MyAnimation = () => {\n",
    "  return null;\n",
    "};\n",
    "```\n",
    "It renders nothing yet.",
]
HISTORY = [{"role": "user", "content": "make a ball"}, {"role": "assistant", "content": "```tsx\nball\n```"}]


@pytest.fixture(scope="module")
def ripple(module_ripple: RippleServer) -> RippleServer:
    """One server for the whole module; each test signs in as its own users (`alice`, `bob`)."""
    return module_ripple


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeAnthropic]:
    """A fake Anthropic API that answers REPLY, with the environment pointing Claude at it."""
    async with run_fake_anthropic(FakeScript(chunks=REPLY, require_api_key=API_KEY)) as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
        monkeypatch.setenv("RIPPLE_ANTHROPIC_MODEL", MODEL)
        monkeypatch.setenv("RIPPLE_ANTHROPIC_TIMEOUT_S", "5")
        monkeypatch.setenv("RIPPLE_STREAM_PATCH_INTERVAL_S", "0.1")
        yield fake


async def token_of(ripple: RippleServer, user: str) -> str:
    caller = await ripple.caller(user)
    assert caller.identity is not None
    return caller.identity.token_identifier


async def rows_of(ripple: RippleServer, user: str) -> list[dict[str, Any]]:
    """Every generation of `user`, read directly (pending ones included), oldest first."""
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT _id, status FROM generations WHERE user_id = $1 ORDER BY _creation_time",
            await token_of(ripple, user),
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def stored_parent(ripple: RippleServer, user: str, **fields: Any) -> str:
    doc = {
        "userId": await token_of(ripple, user),
        "prompt": "a bouncing ball",
        "code": "ball()",
        "rawCode": "```tsx\nball()\n```",
        "aspectRatio": "9:16",
        "fps": 24,
        "durationInSeconds": 3,
    }
    return await ripple.call("generations:store", {**doc, **fields}, internal=True)


def refine_args(parent: str, **extra: Any) -> dict[str, Any]:
    return {"parentGenerationId": parent, "refinementPrompt": "make it blue", "conversationHistory": HISTORY, **extra}


# generate


async def test_generate_streams_claude_into_a_new_generation(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    result = await ripple.call(
        "generateAnimation:generate", {"prompt": "a bouncing ball", "fps": 24, "durationInSeconds": 2.5}, user=alice
    )
    assert result["rawCode"] == "".join(REPLY) and result["code"] == CODE
    assert result["durationInFrames"] == 60 and result["fps"] == 24
    doc = await ripple.call("generations:get", {"id": result["id"]}, user=alice)
    assert doc["status"] == "success" and doc["prompt"] == "a bouncing ball" and doc["model"] == MODEL
    assert (doc["code"], doc["rawCode"], doc["durationInFrames"], doc["fps"]) == (CODE, "".join(REPLY), 60, 24)
    assert doc["durationInSeconds"] == 2.5 and "parentGenerationId" not in doc
    [request] = fake.requests
    assert request["model"] == MODEL and request["stream"] is True and request["system"] == GENERATION_SYSTEM_PROMPT
    [message] = request["messages"]
    assert message["role"] == "user" and message["content"].startswith("a bouncing ball")
    assert "24 fps, 2.5 seconds (60 frames)" in message["content"]
    assert fake.api_keys == [API_KEY]


async def test_generate_defaults_to_30_fps_for_5_seconds(ripple: RippleServer, fake: FakeAnthropic, alice: str) -> None:
    fake.script = FakeScript(chunks=["no fence, just code();"])
    result = await ripple.call("generateAnimation:generate", {"prompt": "p", "aspectRatio": "1:1"}, user=alice)
    assert (result["durationInFrames"], result["fps"]) == (150, 30)
    assert result["code"] == "no fence, just code();"  # a reply without a code block is all code
    doc = await ripple.call("generations:get", {"id": result["id"]}, user=alice)
    assert doc["aspectRatio"] == "1:1" and "durationInSeconds" not in doc


async def test_generate_patches_partial_output_while_streaming(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    fake.script = FakeScript(chunks=REPLY, chunk_delay_s=0.12)
    task = asyncio.create_task(ripple.call("generateAnimation:generate", {"prompt": "slow"}, user=alice))
    seen: list[tuple[str, str | None]] = []
    opts = {"paginationOpts": {"numItems": 1, "cursor": None}}
    while not task.done():
        page = (await ripple.call("generations:list", opts, user=alice))["page"]
        if page and page[0]["status"] == "pending" and "rawCode" in page[0]:
            if not seen or seen[-1][0] != page[0]["rawCode"]:
                seen.append((page[0]["rawCode"], page[0].get("code")))
        await asyncio.sleep(0.02)
    result = await task
    final = "".join(REPLY)
    assert len(seen) >= 3, seen  # the code appeared bit by bit
    assert all(final.startswith(raw) for raw, _ in seen)
    assert [len(raw) for raw, _ in seen] == sorted(len(raw) for raw, _ in seen)
    assert all(code == extract_code(raw, partial=True) for raw, code in seen)  # no code until the block opens
    assert any(code and CODE.startswith(code) for _, code in seen)
    assert (await ripple.call("generations:get", {"id": result["id"]}, user=alice))["rawCode"] == final


async def test_generate_patches_at_most_every_interval(
    ripple: RippleServer, fake: FakeAnthropic, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RIPPLE_STREAM_PATCH_INTERVAL_S", "30")
    fake.script = FakeScript(chunks=REPLY, chunk_delay_s=0.08)
    task = asyncio.create_task(ripple.call("generateAnimation:generate", {"prompt": "slow"}, user=alice))
    seen: set[str] = set()
    opts = {"paginationOpts": {"numItems": 1, "cursor": None}}
    while not task.done():
        page = (await ripple.call("generations:list", opts, user=alice))["page"]
        if page and page[0]["status"] == "pending" and "rawCode" in page[0]:
            seen.add(page[0]["rawCode"])
        await asyncio.sleep(0.02)
    await task
    assert seen == {REPLY[0]}  # the first text at once, then nothing until the reply was complete


async def test_generate_without_api_key_refuses_and_stores_nothing(
    ripple: RippleServer, fake: FakeAnthropic, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "")
    with pytest.raises(ConvexError, match="Claude is not configured: set ANTHROPIC_API_KEY"):
        await ripple.call("generateAnimation:generate", {"prompt": "p"}, user=alice)
    assert await rows_of(ripple, alice) == [] and fake.requests == []


async def test_generate_overloaded_is_retried_then_fails_clearly(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    fake.script = FakeScript(mode="error", error_status=529)
    with pytest.raises(ConvexError, match=r"Claude API error \(HTTP 529 overloaded_error\).*overloaded") as info:
        await ripple.call("generateAnimation:generate", {"prompt": "p"}, user=alice)
    assert info.value.data == info.value.message  # the client gets the message as errorData too
    assert len(fake.requests) == 3  # the SDK retried twice
    assert await rows_of(ripple, alice) == []


async def test_generate_refused_request_fails_without_retry(
    ripple: RippleServer, fake: FakeAnthropic, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "wrong-key")
    with pytest.raises(ConvexError, match=r"HTTP 401 authentication_error.*check ANTHROPIC_API_KEY"):
        await ripple.call("generateAnimation:generate", {"prompt": "p"}, user=alice)
    assert len(fake.requests) == 1 and await rows_of(ripple, alice) == []


async def test_generate_timeouts_fail_clearly_and_remove_the_row(
    ripple: RippleServer, fake: FakeAnthropic, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RIPPLE_ANTHROPIC_TIMEOUT_S", "0.2")
    fake.script = FakeScript(chunks=REPLY, hang_after_chunks=3)  # answers, then stalls mid-reply
    start = time.monotonic()
    with pytest.raises(ConvexError, match=r"Claude did not answer within 0.2 s"):
        await ripple.call("generateAnimation:generate", {"prompt": "p"}, user=alice)
    assert time.monotonic() - start < 3
    fake.script = FakeScript(mode="hang")  # never answers
    with pytest.raises(ConvexError, match=r"Claude did not answer within 0.2 s"):
        await ripple.call("generateAnimation:generate", {"prompt": "p"}, user=alice)
    assert await rows_of(ripple, alice) == []


async def test_generate_stream_error_mid_way_removes_the_row(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    fake.script = FakeScript(chunks=REPLY, stream_error_after=3)
    with pytest.raises(ConvexError, match=r"Claude API error \(overloaded_error\)"):
        await ripple.call("generateAnimation:generate", {"prompt": "p"}, user=alice)
    assert await rows_of(ripple, alice) == []


async def test_generate_truncated_reply_fails(ripple: RippleServer, fake: FakeAnthropic, alice: str) -> None:
    fake.script = FakeScript(chunks=REPLY[:4], stop_reason="max_tokens")
    with pytest.raises(ConvexError, match="cut off at 8192 tokens"):
        await ripple.call("generateAnimation:generate", {"prompt": "p"}, user=alice)
    assert await rows_of(ripple, alice) == []


async def test_generate_requires_sign_in_and_valid_arguments(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    with pytest.raises(AuthRequired, match="signed in to generate animations"):
        await ripple.call("generateAnimation:generate", {"prompt": "p"})
    with pytest.raises(RippleError, match='"prompt": String should have at least 1 character'):
        await ripple.call("generateAnimation:generate", {"prompt": ""}, user=alice)
    with pytest.raises(RippleError, match='"fps": Input should be greater than 0'):
        await ripple.call("generateAnimation:generate", {"prompt": "p", "fps": 0}, user=alice)
    with pytest.raises(RippleError, match='missing required argument "prompt"'):
        await ripple.call("generateAnimation:generate", {}, user=alice)
    assert fake.requests == [] and await rows_of(ripple, alice) == []


# refine (preview)


async def test_refine_returns_new_code_and_stores_nothing(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    args = {"currentCode": "ball()", "refinementPrompt": "make it blue", "conversationHistory": HISTORY}
    result = await ripple.call("generateAnimation:refine", args, user=alice)
    assert result == {"rawCode": "".join(REPLY), "code": CODE}
    assert await rows_of(ripple, alice) == []
    [request] = fake.requests
    assert request["system"] == REFINEMENT_SYSTEM_PROMPT and request["messages"][:2] == HISTORY
    last = request["messages"][-1]
    assert last["role"] == "user" and "ball()" in last["content"] and "make it blue" in last["content"]
    plain = await ripple.call("generateAnimation:refine", {"currentCode": "x", "refinementPrompt": "y"}, user=alice)
    assert plain["code"] == CODE and len(fake.requests[1]["messages"]) == 1


async def test_refine_reports_failures_and_requires_sign_in(
    ripple: RippleServer, fake: FakeAnthropic, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = {"currentCode": "x", "refinementPrompt": "y"}
    with pytest.raises(AuthRequired):
        await ripple.call("generateAnimation:refine", args)
    fake.script = FakeScript(mode="error", error_status=400, error_message="messages: bad")
    with pytest.raises(ConvexError, match=r"HTTP 400 invalid_request_error\): messages: bad"):
        await ripple.call("generateAnimation:refine", args, user=alice)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "")
    with pytest.raises(ConvexError, match="Claude is not configured"):
        await ripple.call("generateAnimation:refine", args, user=alice)


# refineAndPersist


async def test_refine_and_persist_creates_a_linked_child(ripple: RippleServer, fake: FakeAnthropic, alice: str) -> None:
    parent = await stored_parent(ripple, alice)
    result = await ripple.call("generateAnimation:refineAndPersist", refine_args(parent), user=alice)
    assert set(result) == {"id", "rawCode", "code", "durationInFrames", "fps"}
    assert result["code"] == CODE and result["rawCode"] == "".join(REPLY)
    assert (result["durationInFrames"], result["fps"]) == (72, 24)  # 3 s at the parent's 24 fps
    child = await ripple.call("generations:get", {"id": result["id"]}, user=alice)
    assert child["status"] == "success" and child["parentGenerationId"] == parent
    assert child["refinementPrompt"] == "make it blue" and child["prompt"] == "a bouncing ball"
    assert (child["aspectRatio"], child["fps"], child["durationInSeconds"]) == ("9:16", 24, 3)
    assert child["conversationHistory"] == HISTORY and child["code"] == CODE
    [request] = fake.requests
    assert request["system"] == REFINEMENT_SYSTEM_PROMPT and request["messages"][:2] == HISTORY
    assert "ball()" in request["messages"][-1]["content"] and "make it blue" in request["messages"][-1]["content"]
    children = await ripple.call("generations:listByParent", {"parentId": parent}, user=alice)
    assert [c["_id"] for c in children] == [result["id"]]
    chain = await ripple.call("generations:getRefinementChain", {"generationId": result["id"]}, user=alice)
    assert [g["_id"] for g in chain] == [parent, result["id"]]


async def test_refine_and_persist_over_http(ripple: RippleServer, fake: FakeAnthropic, alice: str) -> None:
    parent = await stored_parent(ripple, alice)
    response = await ripple.http(
        "action", "generateAnimation:refineAndPersist", refine_args(parent), token=ripple.token(alice), fmt="json"
    )
    body = response.json()
    assert body["status"] == "success", body
    assert body["value"]["code"] == CODE and body["value"]["durationInFrames"] == 72
    second = await ripple.call("generateAnimation:refineAndPersist", refine_args(body["value"]["id"]), user=alice)
    chain = await ripple.call("generations:getRefinementChain", {"generationId": second["id"]}, user=alice)
    assert [g["_id"] for g in chain] == [parent, body["value"]["id"], second["id"]]
    assert "```tsx\n" + CODE in fake.requests[1]["messages"][-1]["content"]  # refines the extracted code


async def test_refine_and_persist_refuses_another_users_generation(
    ripple: RippleServer, fake: FakeAnthropic, alice: str, bob: str
) -> None:
    parent = await stored_parent(ripple, alice)
    with pytest.raises(ConvexError, match=f'generation "{parent}" not found') as info:
        await ripple.call("generateAnimation:refineAndPersist", refine_args(parent), user=bob)
    assert info.value.data["code"] == "NOT_FOUND"
    assert fake.requests == [] and await rows_of(ripple, bob) == [] and len(await rows_of(ripple, alice)) == 1


async def test_refine_and_persist_failure_removes_the_child(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    parent = await stored_parent(ripple, alice)
    fake.script = FakeScript(chunks=REPLY, stream_error_after=4, chunk_delay_s=0.12)  # partial output, then an error
    with pytest.raises(ConvexError, match=r"Claude API error \(overloaded_error\)"):
        await ripple.call("generateAnimation:refineAndPersist", refine_args(parent), user=alice)
    assert await rows_of(ripple, alice) == [{"_id": parent, "status": "success"}]
    assert await ripple.call("generations:listByParent", {"parentId": parent}, user=alice) == []


async def test_refine_and_persist_without_key_or_code_stores_nothing(
    ripple: RippleServer, fake: FakeAnthropic, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = {"userId": await token_of(ripple, alice), "prompt": "p", "createdAt": 1.0}
    unfinished = await ripple.call("generations:createPending", args, internal=True)
    with pytest.raises(ConvexError, match="has no code yet") as info:
        await ripple.call("generateAnimation:refineAndPersist", refine_args(unfinished), user=alice)
    assert info.value.data["code"] == "INVALID_STATE"
    parent = await stored_parent(ripple, alice)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "")
    with pytest.raises(ConvexError, match="Claude is not configured: set ANTHROPIC_API_KEY"):
        await ripple.call("generateAnimation:refineAndPersist", refine_args(parent), user=alice)
    assert [r["_id"] for r in await rows_of(ripple, alice)] == [unfinished, parent] and fake.requests == []


async def test_refine_and_persist_validates_arguments(ripple: RippleServer, fake: FakeAnthropic, alice: str) -> None:
    parent = await stored_parent(ripple, alice)
    with pytest.raises(AuthRequired):
        await ripple.call("generateAnimation:refineAndPersist", refine_args(parent))
    with pytest.raises(IdError, match=r'"parentGenerationId" must be Id\("generations"\)'):
        await ripple.call("generateAnimation:refineAndPersist", refine_args("nope"), user=alice)
    bad_role = refine_args(parent, conversationHistory=[{"role": "system", "content": "x"}])
    with pytest.raises(RippleError, match=r"conversationHistory\.0\.role"):
        await ripple.call("generateAnimation:refineAndPersist", bad_role, user=alice)
    missing = {"parentGenerationId": parent, "refinementPrompt": "x"}
    with pytest.raises(RippleError, match='missing required argument "conversationHistory"'):
        await ripple.call("generateAnimation:refineAndPersist", missing, user=alice)
    assert fake.requests == [] and len(await rows_of(ripple, alice)) == 1


def test_extract_code_takes_the_first_block_and_handles_open_blocks() -> None:
    assert extract_code("Intro\n```tsx\na();\n```\nmore\n```js\nb();\n```") == "a();"
    assert extract_code("```\nplain\n```") == "plain"
    assert extract_code("```tsx\nstill strea", partial=True) == "still strea"
    assert extract_code("Intro only", partial=True) is None
    assert extract_code("  just code  ") == "just code"


# reference images


async def upload(ripple: RippleServer, data: bytes, content_type: str) -> str:
    """Upload through a real one-time upload URL, as a client does; returns the storage id."""
    url = httpx.URL(await ripple.call("testing:uploadUrl"))
    async with httpx.AsyncClient(base_url=ripple.url, timeout=30) as client:  # the URL's host is the public one
        response = await client.post(url.raw_path.decode(), content=data, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    return str(response.json()["storageId"])


async def test_generate_shows_claude_the_reference_images_before_the_prompt(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    image_png = png()
    first = await upload(ripple, image_png, "image/png")
    second = await upload(ripple, b"GIF89a-not-really", "image/GIF")
    args = {"prompt": "animate this logo", "referenceImageIds": [first, second]}
    result = await ripple.call("generateAnimation:generate", args, user=alice)
    assert result["code"] == CODE
    doc = await ripple.call("generations:get", {"id": result["id"]}, user=alice)
    assert doc["status"] == "success" and doc["referenceImageIds"] == [first, second]
    [request] = fake.requests
    [message] = request["messages"]
    image, gif, text = message["content"]
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(image_png).decode()}
    assert image == {"type": "image", "source": source}
    assert gif["source"]["media_type"] == "image/gif"
    assert text["type"] == "text" and text["text"].startswith("animate this logo")
    assert fake.images == [
        ReceivedImage(0, 0, 0, "image/png", image_png),
        ReceivedImage(0, 0, 1, "image/gif", b"GIF89a-not-really"),
    ]


async def test_refine_and_persist_keeps_the_parents_reference_images(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    image_png = png()
    image = await upload(ripple, image_png, "image/png")
    args = {"prompt": "p", "referenceImageIds": [image]}
    parent = (await ripple.call("generateAnimation:generate", args, user=alice))["id"]
    child = await ripple.call("generateAnimation:refineAndPersist", refine_args(parent), user=alice)
    doc = await ripple.call("generations:get", {"id": child["id"]}, user=alice)
    assert doc["referenceImageIds"] == [image]
    last = fake.requests[1]["messages"][-1]
    assert last["content"][0]["source"]["data"] == base64.b64encode(image_png).decode()
    assert last["content"][-1]["text"].endswith("Change request: make it blue")
    assert [i.request_index for i in fake.images] == [0, 1]


async def test_reference_image_of_a_type_claude_does_not_take_fails_the_generation(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    svg = await upload(ripple, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")
    with pytest.raises(ConvexError, match=r'reference image ".+" is image/svg\+xml; Claude takes only image/png'):
        await ripple.call("generateAnimation:generate", {"prompt": "p", "referenceImageIds": [svg]}, user=alice)
    assert fake.requests == [] and await rows_of(ripple, alice) == []  # failed: the pending row is gone


async def test_reference_image_too_large_fails_the_generation(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    storage = ripple.services.storage
    assert storage is not None
    limit = storage.max_upload_bytes
    storage.max_upload_bytes = MAX_IMAGE_BYTES + 10
    try:
        big = await upload(ripple, b"\x00" * (MAX_IMAGE_BYTES + 1), "image/png")
    finally:
        storage.max_upload_bytes = limit
    with pytest.raises(ConvexError, match=r"over Claude's 5242880-byte limit per image; scale it down"):
        await ripple.call("generateAnimation:generate", {"prompt": "p", "referenceImageIds": [big]}, user=alice)
    assert fake.requests == [] and await rows_of(ripple, alice) == []


async def test_generate_refuses_reference_ids_that_are_not_files(
    ripple: RippleServer, fake: FakeAnthropic, alice: str
) -> None:
    other = await stored_parent(ripple, alice)
    with pytest.raises(IdError, match=r'referenceImageIds.*Id\("_storage"\).*got an id of table "generations"'):
        await ripple.call("generateAnimation:generate", {"prompt": "p", "referenceImageIds": [other]}, user=alice)
    with pytest.raises(IdError, match=r'referenceImageIds.*Id\("_storage"\)'):
        await ripple.call("generateAnimation:generate", {"prompt": "p", "referenceImageIds": ["nope"]}, user=alice)
    assert fake.requests == [] and len(await rows_of(ripple, alice)) == 1


async def test_the_fake_refuses_image_blocks_the_real_api_refuses() -> None:
    """The fake must not accept what Anthropic would refuse, or the image tests above could pass wrongly."""
    import anthropic

    async with run_fake_anthropic() as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="k", max_retries=0)
        for source in (
            {"type": "base64", "media_type": "image/svg+xml", "data": "AAAA"},
            {"type": "base64", "media_type": "image/png", "data": "not base64!"},
        ):
            block = {"type": "image", "source": source}
            with pytest.raises(anthropic.BadRequestError):
                await client.messages.create(
                    model="m",
                    max_tokens=10,
                    messages=[{"role": "user", "content": [block]}],  # type: ignore[list-item]
                )
        assert fake.images == [] and len(fake.requests) == 2
