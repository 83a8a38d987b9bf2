"""imageGeneration (seed 004) against a fake Replicate-style API over real HTTP, watched over the sync protocol.

The image API's settings come from the environment on every call, so tests point them at the fake with
monkeypatched variables. One Ripple server serves the module; each test signs in as its own user.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from functions import crons as seed_crons
from functions.replicate import WebhookRefused, sign_webhook, verify_webhook
from server import ConvexError
from server.crons import CronExecutor
from tests.fakes.replicate_api import FakeReplicate, new_secret, run_fake_replicate
from tests.support.server import RippleServer
from tests.support.ws import SyncClient

TOKEN = "r8_fake_token"
MODEL = "fake-owner/fake-model"
P = "projectRedesign:"
G = "imageGeneration:"


@pytest.fixture(scope="module")
def ripple(module_ripple: RippleServer) -> RippleServer:
    return module_ripple


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def configure(ripple: RippleServer, monkeypatch: pytest.MonkeyPatch, secret: str) -> Callable[[FakeReplicate], None]:
    def point_at(fake: FakeReplicate) -> None:
        monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
        monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
        monkeypatch.setenv("RIPPLE_REPLICATE_WEBHOOK_SECRET", secret)
        monkeypatch.setenv("RIPPLE_REPLICATE_MODEL", MODEL)
        monkeypatch.setenv("RIPPLE_REPLICATE_WEBHOOK_URL", f"{ripple.url}/http/replicate/webhook")

    return point_at


@pytest.fixture
async def fake(secret: str, configure: Callable[[FakeReplicate], None]) -> AsyncIterator[FakeReplicate]:
    async with run_fake_replicate(TOKEN, secret) as fake:
        configure(fake)
        yield fake


async def shot_of(ripple: RippleServer, user: str) -> tuple[str, str]:
    """A new project of `user` with one scene and one shot; (projectId, shotId)."""
    project = await ripple.call(f"{P}createRedesignProject", {"prompt": "Tokyo dreams"}, user=user)
    made = await ripple.call(
        f"{P}createSceneWithShots",
        {
            "projectId": project,
            "sceneNumber": 1,
            "title": "Opening",
            "description": "Dawn",
            "shots": [{"shotNumber": 1, "description": "wide", "initialPrompt": "Tokyo Tower at sunrise"}],
        },
        user=user,
    )
    return project, made["shotIds"][0]


async def signed_in(ripple: RippleServer, user: str) -> SyncClient:
    client = await SyncClient.connect(ripple.ws_url)
    await client.authenticate(ripple.token(user))
    return client


def statuses(images: list[dict[str, Any]]) -> list[str]:
    return [image["status"] for image in images]


async def until(client: SyncClient, qid: int, check: Callable[[Any], bool], timeout_s: float = 10.0) -> Any:
    if not check(client.results[qid]):
        await client.expect(lambda m: m["type"] == "Transition" and check(client.results[qid]), timeout_s=timeout_s)
    return client.results[qid]


async def rows(ripple: RippleServer, shot: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        found = await conn.fetch("SELECT * FROM shot_images WHERE shot_id = $1 ORDER BY variant_number", shot)
    finally:
        await conn.close()
    return [dict(r) for r in found]


async def file_bytes(ripple: RippleServer, storage_id: str) -> bytes:
    async with httpx.AsyncClient(base_url=ripple.url) as client:
        response = await client.get(f"/api/storage/{storage_id}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return response.content


async def test_six_variants_go_pending_processing_complete_live(
    ripple: RippleServer, fake: FakeReplicate, alice: str
) -> None:
    fake.hold = True  # webhooks only when the test delivers them, so each stage can be seen
    fake.create_delay_s = 0.2  # and the rows stay pending while the subscriber looks
    project, shot = await shot_of(ripple, alice)
    client = await signed_in(ripple, alice)
    try:
        images_q = await client.subscribe(f"{P}getShotImages", {"shotId": shot})
        progress_q = await client.subscribe(f"{P}getProjectProgress", {"projectId": project})
        assert client.results[images_q] == [] and client.results[progress_q]["totalImages"] == 0

        response = await client.mutation(f"{G}generateShotImages", {"shotId": shot})
        assert response["success"], response
        result = response["result"]
        assert result["iterationNumber"] == 0 and len(result["imageIds"]) == 6
        first = client.results[images_q]
        assert statuses(first) == ["pending"] * 6  # the rows commit before any prediction is started
        assert [img["variantNumber"] for img in first] == [0, 1, 2, 3, 4, 5]
        assert all(img["imageUrl"] == "" and img["iterationPrompt"] == "Tokyo Tower at sunrise" for img in first)
        assert client.results[progress_q]["imagesPending"] == 6

        processing = await until(client, images_q, lambda imgs: statuses(imgs) == ["processing"] * 6)
        assert sorted(img["replicateImageId"] for img in processing) == sorted(fake.predictions)
        assert len(fake.requests) == 6
        for body in fake.requests:
            assert body["version"] == MODEL and body["input"] == {"prompt": "Tokyo Tower at sunrise"}
            assert body["webhook_events_filter"] == ["completed"]
            assert body["webhook"].startswith(f"{ripple.url}/http/replicate/webhook?imageId=")

        seen_progress = [client.results[progress_q]["imagesComplete"]]
        for image in processing:
            answer = await fake.deliver(image["replicateImageId"])
            assert answer.status_code == 200 and answer.json() == {"status": "storing"}
            await until(client, progress_q, lambda p, n=seen_progress[-1]: p["imagesComplete"] > n)
            seen_progress.append(client.results[progress_q]["imagesComplete"])
        assert seen_progress == [0, 1, 2, 3, 4, 5, 6]  # the progress moved live, one image at a time
        progress = client.results[progress_q]
        assert (progress["totalImages"], progress["imageProgress"], progress["imagesProcessing"]) == (6, 100, 0)

        done = client.results[images_q]
        assert statuses(done) == ["complete"] * 6
        for image in done:
            storage_id = image["imageStorageId"]
            assert image["imageUrl"].endswith(f"/api/storage/{storage_id}")
            assert await file_bytes(ripple, storage_id) == fake.image_of(image["replicateImageId"])
    finally:
        await client.close()


async def test_next_iteration_numbers_on_and_keeps_the_parent(
    ripple: RippleServer, fake: FakeReplicate, alice: str
) -> None:
    _, shot = await shot_of(ripple, alice)
    first = await ripple.call(f"{G}generateShotImages", {"shotId": shot}, user=alice)
    await fake.wait_delivered(6)
    second = await ripple.call(
        f"{G}generateShotImages",
        {"shotId": shot, "prompt": "more clouds", "parentImageId": first["imageIds"][2]},
        user=alice,
    )
    assert second["iterationNumber"] == 1
    await fake.wait_delivered(12)
    images = await ripple.call(f"{P}getShotImages", {"shotId": shot, "iterationNumber": 1}, user=alice)
    assert {img["parentImageId"] for img in images} == {first["imageIds"][2]}
    assert {img["iterationPrompt"] for img in images} == {"more clouds"}
    assert fake.requests[-1]["input"]["prompt"] == "more clouds"


async def test_a_failed_prediction_fails_its_row_only(ripple: RippleServer, fake: FakeReplicate, alice: str) -> None:
    fake.fail = {2}
    fake.refuse = {4}  # refused when started: no prediction, no webhook
    _, shot = await shot_of(ripple, alice)
    client = await signed_in(ripple, alice)
    try:
        qid = await client.subscribe(f"{P}getShotImages", {"shotId": shot})
        await client.mutation(f"{G}generateShotImages", {"shotId": shot})
        images = await until(
            client, qid, lambda imgs: imgs and all(s in ("complete", "failed") for s in statuses(imgs))
        )
        assert statuses(images) == ["complete", "complete", "failed", "complete", "failed", "complete"]
        assert images[2]["metadata"]["error"] == fake.error and "imageStorageId" not in images[2]
        assert "HTTP 422" in images[4]["metadata"]["error"] and "replicateImageId" not in images[4]
        assert "prediction 4 refused" in images[4]["metadata"]["error"]
    finally:
        await client.close()


async def test_bad_signatures_are_refused_and_change_nothing(
    ripple: RippleServer, fake: FakeReplicate, alice: str
) -> None:
    fake.hold = True
    _, shot = await shot_of(ripple, alice)
    await ripple.call(f"{G}generateShotImages", {"shotId": shot}, user=alice)
    deadline = time.monotonic() + 10
    while {r["status"] for r in await rows(ripple, shot)} != {"processing"}:
        assert time.monotonic() < deadline, await rows(ripple, shot)
    before = await rows(ripple, shot)
    prediction = before[0]["replicate_image_id"]

    refusals = [
        await fake.deliver(prediction, secret=new_secret()),  # another deployment's secret
        await fake.deliver(prediction, timestamp=int(time.time()) - 6 * 60),  # stale: a replay
        await fake.deliver(prediction, signature=""),  # unsigned
        await fake.deliver(prediction, signature="v1,AAAA"),
    ]
    assert [r.status_code for r in refusals] == [401] * 4
    messages = [r.json()["message"] for r in refusals]
    assert "does not match" in messages[0] and "stale" in messages[1]
    assert "unsigned" in messages[2] and "does not match" in messages[3]
    assert all(r.json()["code"] == "BadSignature" for r in refusals)
    assert await rows(ripple, shot) == before

    # The same delivery, rightly signed, is taken.
    assert (await fake.deliver(prediction)).json() == {"status": "storing"}


async def test_duplicate_webhooks_change_nothing(ripple: RippleServer, fake: FakeReplicate, alice: str) -> None:
    fake.duplicate = True
    _, shot = await shot_of(ripple, alice)
    await ripple.call(f"{G}generateShotImages", {"shotId": shot}, user=alice)
    deliveries = await fake.wait_delivered(12)
    assert all(d.status_code == 200 for d in deliveries)
    assert sorted(d.body["status"] for d in deliveries) == ["duplicate"] * 6 + ["storing"] * 6
    deadline = time.monotonic() + 10
    while {r["status"] for r in await rows(ripple, shot)} != {"complete"}:
        assert time.monotonic() < deadline, await rows(ripple, shot)
    done = await rows(ripple, shot)

    # A retry long after completion: answered 200 (so the provider stops), nothing written, no second file.
    again = await fake.deliver(done[0]["replicate_image_id"])
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    assert await rows(ripple, shot) == done
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM _storage WHERE _id = ANY($1::text[])", [r["image_storage_id"] for r in done]
        )
    finally:
        await conn.close()
    assert stored == 6


async def test_a_delivery_for_another_prediction_is_refused(
    ripple: RippleServer, fake: FakeReplicate, alice: str
) -> None:
    fake.hold = True
    _, shot = await shot_of(ripple, alice)
    await ripple.call(f"{G}generateShotImages", {"shotId": shot}, user=alice)
    deadline = time.monotonic() + 10
    while {r["status"] for r in await rows(ripple, shot)} != {"processing"}:
        assert time.monotonic() < deadline
    before = await rows(ripple, shot)
    first, second = before[0], before[1]
    fake.webhooks[second["replicate_image_id"]] = fake.webhooks[first["replicate_image_id"]]  # the wrong row
    answer = await fake.deliver(second["replicate_image_id"])
    assert answer.status_code == 409 and answer.json()["code"] == "CONFLICT"
    assert await rows(ripple, shot) == before


async def test_unconfigured_generation_says_what_to_set(
    ripple: RippleServer, monkeypatch: pytest.MonkeyPatch, alice: str
) -> None:
    for name in ("REPLICATE_API_TOKEN", "RIPPLE_REPLICATE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    _, shot = await shot_of(ripple, alice)
    with pytest.raises(ConvexError, match="set REPLICATE_API_TOKEN and RIPPLE_REPLICATE_WEBHOOK_SECRET"):
        await ripple.call(f"{G}generateShotImages", {"shotId": shot}, user=alice)
    assert await rows(ripple, shot) == []
    async with httpx.AsyncClient(base_url=ripple.url) as client:
        answer = await client.post("/http/replicate/webhook?imageId=x", content=b"{}")
    assert answer.status_code == 503 and "RIPPLE_REPLICATE_WEBHOOK_SECRET" in answer.json()["message"]


async def test_only_the_owner_generates(ripple: RippleServer, fake: FakeReplicate, alice: str, bob: str) -> None:
    _, shot = await shot_of(ripple, alice)
    with pytest.raises(ConvexError) as refused:
        await ripple.call(f"{G}generateShotImages", {"shotId": shot}, user=bob)
    assert refused.value.data["code"] == "NOT_FOUND"
    assert await rows(ripple, shot) == [] and fake.requests == []


def test_signature_matches_the_standard_webhooks_vector() -> None:
    """The example of the standard-webhooks specification, so the scheme is the published one, not just ours."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign_webhook(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": f"v1,bm9wZQ== {signature}",  # several signatures during a key rotation: any may match
    }
    verify_webhook(secret, headers, body, now=1614265330 + 299)
    with pytest.raises(WebhookRefused, match="stale"):
        verify_webhook(secret, headers, body, now=1614265330 + 301)
    with pytest.raises(WebhookRefused, match="does not match"):
        verify_webhook(secret, headers, body + b" ", now=1614265330)


async def test_deleting_the_project_deletes_its_generated_files(
    ripple: RippleServer, fake: FakeReplicate, alice: str
) -> None:
    project, shot = await shot_of(ripple, alice)
    await ripple.call(f"{G}generateShotImages", {"shotId": shot}, user=alice)
    deadline = time.monotonic() + 10
    while {r["status"] for r in await rows(ripple, shot)} != {"complete"}:
        assert time.monotonic() < deadline, await rows(ripple, shot)
    urls = [f"/api/storage/{r['image_storage_id']}" for r in await rows(ripple, shot)]
    async with httpx.AsyncClient(base_url=ripple.url) as http:
        assert [(await http.get(url)).status_code for url in urls] == [200] * 6
        await ripple.call(f"{P}deleteRedesignProject", {"projectId": project}, user=alice)
        assert [(await http.get(url)).status_code for url in urls] == [404] * 6


async def scheduled_states(ripple: RippleServer, name: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        found = await conn.fetch("SELECT state FROM _scheduled_functions WHERE name = $1", name)
    finally:
        await conn.close()
    return [json.loads(r["state"]) if isinstance(r["state"], str) else dict(r["state"]) for r in found]


async def test_images_without_a_result_fail_after_the_timeout_live(
    ripple: RippleServer, fake: FakeReplicate, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.hold = True  # the provider never calls back
    project, shot = await shot_of(ripple, alice)
    client = await signed_in(ripple, alice)
    try:
        progress_q = await client.subscribe(f"{P}getProjectProgress", {"projectId": project})
        await client.mutation(f"{G}generateShotImages", {"shotId": shot})
        await until(client, progress_q, lambda p: p["imagesProcessing"] == 6)

        # Not yet stale: nothing changes.
        assert await ripple.call(f"{G}failStalledImages", {"staleAfterMinutes": 5}, internal=True) == 0
        assert {r["status"] for r in await rows(ripple, shot)} == {"processing"}
        # The seed's cron, once they are stale by the configured time (which makes stale, too, the rows other tests
        # of this module's server left waiting).
        monkeypatch.setenv("RIPPLE_IMAGE_STALE_AFTER_MINUTES", "0.0001")
        job = seed_crons.crons.jobs["fail stalled images"]
        cron = CronExecutor(ripple.services.database, [job])  # the scheduler runs it within a second
        assert await cron.run_tick(job, time.time() * 1000) == "scheduled"
        progress = await until(client, progress_q, lambda p: p["imagesFailed"] == 6)
        assert (progress["imagesProcessing"], progress["imageProgress"]) == (0, 100)
        images = await ripple.call(f"{P}getShotImages", {"shotId": shot}, user=alice)
        assert {img["metadata"]["error"] for img in images} == {
            "the image API sent no result within 0.0001 minutes; generate the images again"
        }
        assert all(img["metadata"]["model"] == MODEL for img in images)  # the rest of the metadata is kept

        # A result arriving after all is ignored: the row stays failed, and no file is stored.
        late = await fake.deliver(images[0]["replicateImageId"])
        assert late.status_code == 200 and late.json() == {"status": "duplicate"}
        assert {r["status"] for r in await rows(ripple, shot)} == {"failed"}
        assert {r["image_storage_id"] for r in await rows(ripple, shot)} == {None}
    finally:
        await client.close()


async def test_a_failed_start_fails_its_images_at_once(
    ripple: RippleServer, fake: FakeReplicate, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, shot = await shot_of(ripple, alice)
    # Not a refusal by the provider (those fail their row and the run goes on) but the run itself breaking: here
    # a base URL httpx cannot even parse.
    monkeypatch.setenv("REPLICATE_BASE_URL", "http://bad\x01host")
    client = await signed_in(ripple, alice)
    try:
        progress_q = await client.subscribe(f"{P}getProjectProgress", {"projectId": project})
        await client.mutation(f"{G}generateShotImages", {"shotId": shot})
        await until(client, progress_q, lambda p: p["imagesFailed"] == 6)
    finally:
        await client.close()
    errors = {json.loads(r["metadata"])["error"] for r in await rows(ripple, shot)}
    assert len(errors) == 1
    [error] = errors
    assert error.startswith("the predictions could not be started: ") and "generate the images again" in error
    assert fake.requests == []
    deadline = time.monotonic() + 10
    while not any(s["kind"] == "failed" for s in await scheduled_states(ripple, "imageGeneration:startPredictions")):
        assert time.monotonic() < deadline, "the scheduled action was not marked failed"
        await asyncio.sleep(0.05)
