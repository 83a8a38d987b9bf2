"""`ctx.storage` and `/api/storage`, on a real server, real sockets and a real PostgreSQL (server/storage.py).

Every test runs once per backend: the directory, and S3 (server/storage_s3.py) against moto's S3 server over
loopback HTTP. Files behave the same on both: what differs is only where `stored` finds the bytes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from server.database.ids import new_id
from server.errors import ConvexError, IdError, RippleError
from server.storage_sweep import OrphanSweep
from tests.support import s3
from tests.support.server import RippleServer, run_server
from tests.support.ws import SyncClient

LIMIT = 1000
PREFIX = "files/"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3.moto_server() as endpoint:
        yield endpoint


def backend_settings(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if backend == "directory":
        return {"storage_dir": tmp_path / "files"}
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for name, value in s3.CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    endpoint: str = request.getfixturevalue("s3_endpoint")
    return {
        "storage_s3_bucket": s3.new_bucket(endpoint),
        "storage_s3_endpoint_url": endpoint,
        "storage_s3_region": s3.REGION,
        "storage_s3_prefix": PREFIX,
    }


@pytest.fixture(params=["directory", "s3"])
async def files(fresh_dsn: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[RippleServer]:
    overrides = backend_settings(request.param, request, tmp_path)
    async with run_server(fresh_dsn, storage_max_upload_bytes=LIMIT, **overrides) as server:
        assert server.settings.storage_kind() == request.param
        # The port is the OS's choice: file URLs start with it once it is known (RIPPLE_PUBLIC_URL in a deployment).
        assert server.services.storage is not None
        server.services.storage.base_url = server.url
        yield server


def stored(server: RippleServer) -> list[str]:
    """The storage ids whose bytes the backend holds (temporary files and other keys would show as themselves)."""
    settings = server.settings
    if settings.storage_kind() == "directory":
        return sorted(p.name for p in settings.storage_path().rglob("*") if p.is_file())
    assert settings.storage_s3_endpoint_url is not None and settings.storage_s3_bucket is not None
    names = s3.keys(settings.storage_s3_endpoint_url, settings.storage_s3_bucket)
    return sorted(name.removeprefix(PREFIX) if name.startswith(PREFIX) else name for name in names)


async def upload(server: RippleServer, data: bytes, content_type: str = "text/plain") -> httpx.Response:
    url = await server.call("testing:uploadUrl")
    assert url.startswith(server.url + "/api/storage/upload?token=")
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(url, content=data, headers={"Content-Type": content_type})


async def test_upload_serve_and_live_listing(files: RippleServer) -> None:
    client = await SyncClient.connect(files.ws_url)
    try:
        qid = await client.subscribe("testing:files")
        assert client.results[qid] == []
        data = b"hello, ripple storage"
        response = await upload(files, data, "text/plain; charset=utf-8")
        assert response.status_code == 200, response.text
        storage_id = response.json()["storageId"]
        await client.expect(lambda m: m["type"] == "Transition" and m["modifications"], timeout_s=5)
        [doc] = client.results[qid]
        assert stored(files) == [storage_id]
        sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
        assert doc["_id"] == storage_id
        assert doc["sha256"] == sha and doc["size"] == len(data)
        assert doc["contentType"] == "text/plain; charset=utf-8"

        found = await files.call("testing:file", {"id": storage_id})
        assert found["doc"]["_id"] == storage_id
        url = found["url"]
        assert url == f"{files.url}/api/storage/{storage_id}"
        async with httpx.AsyncClient(timeout=30) as http:
            whole = await http.get(url)
            assert whole.status_code == 200
            assert whole.content == data
            assert whole.headers["content-type"] == "text/plain; charset=utf-8"
            assert whole.headers["etag"] == f'"{sha}"'

            part = await http.get(url, headers={"Range": "bytes=0-3"})
            assert part.status_code == 206 and part.content == b"hell"
            assert part.headers["content-range"] == f"bytes 0-3/{len(data)}"
            tail = await http.get(url, headers={"Range": "bytes=-7"})
            assert tail.status_code == 206 and tail.content == data[-7:]
            past = await http.get(url, headers={"Range": f"bytes={len(data)}-"})
            assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"

            same = await http.get(url, headers={"If-None-Match": f'"{sha}"'})
            assert same.status_code == 304 and same.content == b""
            other = await http.get(url, headers={"If-None-Match": '"something-else"'})
            assert other.status_code == 200 and other.content == data
    finally:
        await client.close()


async def test_an_upload_url_works_once_and_expires(files: RippleServer) -> None:
    url = await files.call("testing:uploadUrl")
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(url, content=b"one")
        assert first.status_code == 200
        again = await http.post(url, content=b"two")
        assert again.status_code == 403 and "already used" in again.json()["message"]
        made_up = await http.post(f"{files.url}/api/storage/upload?token=nope", content=b"x")
        assert made_up.status_code == 403

        late = await files.call("testing:uploadUrl")
        conn = await asyncpg.connect(files.settings.database_url)
        try:
            await conn.execute("UPDATE _ripple_storage_uploads SET expires_at = now() - interval '1 second'")
        finally:
            await conn.close()
        expired = await http.post(late, content=b"late")
        assert expired.status_code == 403 and "expired" in expired.json()["message"]
    assert len(await files.call("testing:files")) == 1
    assert len(stored(files)) == 1


async def test_a_failed_mutation_makes_no_upload_url(files: RippleServer) -> None:
    with pytest.raises(ConvexError):
        await files.call("testing:uploadUrl", {"fail": True})
    conn = await asyncpg.connect(files.settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM _ripple_storage_uploads") == 0
    finally:
        await conn.close()


async def test_an_oversized_upload_is_refused_and_stores_nothing(files: RippleServer) -> None:
    too_big = b"x" * (LIMIT + 1)
    response = await upload(files, too_big)
    assert response.status_code == 413 and str(LIMIT) in response.json()["message"]

    # Without a Content-Length (chunked), the limit is found while streaming: still 413, still nothing stored.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(LIMIT // 100 + 1):
            yield b"y" * 100

    url = await files.call("testing:uploadUrl")
    async with httpx.AsyncClient(timeout=30) as http:
        streamed = await http.post(url, content=chunks())
    assert streamed.status_code == 413
    assert await files.call("testing:files") == []
    assert stored(files) == []

    exactly = await upload(files, b"z" * LIMIT)
    assert exactly.status_code == 200


async def test_delete_removes_row_and_file_only_when_committed(files: RippleServer) -> None:
    storage_id = (await upload(files, b"to be deleted")).json()["storageId"]
    url = f"{files.url}/api/storage/{storage_id}"
    with pytest.raises(ConvexError):
        await files.call("testing:deleteFile", {"id": storage_id, "fail": True})
    client = await SyncClient.connect(files.ws_url)
    try:
        qid = await client.subscribe("testing:file", {"id": storage_id})
        assert client.results[qid]["url"] == url
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(url)).content == b"to be deleted"  # rolled back: still there, bytes and all
            head = await http.head(url)
            assert head.status_code == 200 and head.headers["content-length"] == "13" and head.content == b""
            await files.call("testing:deleteFile", {"id": storage_id})
            gone = await http.get(url)
            assert gone.status_code == 404 and storage_id in gone.json()["message"]
        # get_url's read is recorded: the subscribed query sees the file go.
        await client.expect(lambda m: m["type"] == "Transition" and m["modifications"], timeout_s=5)
        assert client.results[qid] == {"doc": None, "url": None}
    finally:
        await client.close()
    assert await files.call("testing:files") == []
    assert stored(files) == []
    assert (await files.call("testing:file", {"id": storage_id}))["url"] is None
    with pytest.raises(RippleError, match="no file has storage id"):
        await files.call("testing:deleteFile", {"id": storage_id})


async def test_an_action_stores_reads_and_deletes(files: RippleServer) -> None:
    result: dict[str, Any] = await files.call("testing:storeAndRead", {"text": "from an action", "contentType": "a/b"})
    assert result["text"] == "from an action"
    assert result["url"] == f"{files.url}/api/storage/{result['id']}"
    assert result["after"] is None and result["urlAfter"] is None
    assert stored(files) == []


async def test_id_of_storage_rejects_other_tables(files: RippleServer) -> None:
    video = await files.call("testing:insertKeyed", {"key": "k"})
    with pytest.raises(IdError, match='must be Id\\("_storage"\\), got an id of table "videos"'):
        await files.call("testing:file", {"id": video})
    with pytest.raises(IdError):
        await files.call("testing:file", {"id": "not-an-id"})
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{files.url}/api/storage/{video}")).status_code == 404
        assert (await http.get(f"{files.url}/api/storage/nonsense")).status_code == 404


GRACE_S = 1.5


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def bytes_without_row(server: RippleServer, data: bytes, table: str = "_storage") -> str:
    """Bytes stored under a new id whose row is never inserted: what a crash between the two leaves."""
    storage = server.services.storage
    assert storage is not None
    key = new_id(storage.database.catalog.table(table).number)
    await storage.blobs.write(key, _once(data), LIMIT)
    return key


def put_foreign(server: RippleServer, name: str, modified_s: float) -> None:
    """Something in the store that is not a file of Ripple's (beside the files, or under the S3 prefix)."""
    settings = server.settings
    if settings.storage_kind() == "directory":
        path = settings.storage_path() / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not ours")
        os.utime(path, (modified_s, modified_s))
        return
    assert settings.storage_s3_endpoint_url is not None
    s3.client(settings.storage_s3_endpoint_url).put_object(
        Bucket=settings.storage_s3_bucket, Key=PREFIX + name, Body=b"not ours"
    )


async def test_the_sweep_removes_old_orphans_only(files: RippleServer) -> None:
    storage = files.services.storage
    assert storage is not None
    named = (await upload(files, b"a file with its row")).json()["storageId"]
    undeleted = (await upload(files, b"its delete committed, then the server died")).json()["storageId"]
    conn = await asyncpg.connect(files.settings.database_url)
    try:
        await conn.execute("DELETE FROM _storage WHERE _id = $1", undeleted)
    finally:
        await conn.close()
    unrecorded = await bytes_without_row(files, b"written, then the server died before the row")
    not_a_file_id = await bytes_without_row(files, b"named by an id of another table", table="videos")
    put_foreign(files, "notes.txt", time.time() - 3600)
    partial = ""
    if files.settings.storage_kind() == "directory":  # a write cut short leaves its temporary file
        key = new_id(storage.database.catalog.table("_storage").number)
        temp = files.settings.storage_path() / key[:2] / key[2:4] / f".{key}.{uuid.uuid4().hex}.tmp"
        temp.parent.mkdir(parents=True, exist_ok=True)
        temp.write_bytes(b"half")
        partial = temp.name
    await asyncio.sleep(GRACE_S + 1.2)
    young = await bytes_without_row(files, b"an upload in flight: bytes written, row coming")
    young_partial = ""
    if partial:
        young_partial = f".{young}.{uuid.uuid4().hex}.tmp"
        (files.settings.storage_path() / young[:2] / young[2:4] / young_partial).write_bytes(b"in flight")
    before = set(stored(files))
    assert {named, undeleted, unrecorded, not_a_file_id, young, "notes.txt"} <= before

    report = await OrphanSweep(storage, grace_s=GRACE_S, interval_s=0).sweep()

    assert report is not None
    assert (report.checked, report.removed, report.partial) == (3, 2, 1 if partial else 0)
    assert set(stored(files)) == before - {undeleted, unrecorded, partial}
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{files.url}/api/storage/{named}")).content == b"a file with its row"
    again = await OrphanSweep(storage, grace_s=GRACE_S, interval_s=0).sweep()
    assert again is not None and (again.removed, again.partial) == (0, 0)


async def test_one_process_sweeps_at_a_time(files: RippleServer) -> None:
    storage = files.services.storage
    assert storage is not None
    orphan = await bytes_without_row(files, b"orphan")
    sweep = OrphanSweep(storage, grace_s=0.001, interval_s=0)
    await asyncio.sleep(0.01 if files.settings.storage_kind() == "directory" else 1.1)
    conn = await asyncpg.connect(files.settings.database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7264001000000000003)")  # another process sweeping
            assert await sweep.sweep() is None
            assert orphan in stored(files)
    finally:
        await conn.close()
    report = await sweep.sweep()
    assert report is not None and report.removed == 1 and orphan not in stored(files)


async def test_the_server_sweeps_on_its_own(fresh_dsn: str, tmp_path: Path) -> None:
    async with run_server(
        fresh_dsn, storage_dir=tmp_path / "files", storage_orphan_grace_s=0.2, storage_sweep_interval_s=0.3
    ) as server:
        orphan = await bytes_without_row(server, b"orphan")
        deadline = time.monotonic() + 10
        while orphan in stored(server):
            assert time.monotonic() < deadline, "the periodic sweep never removed the orphan"
            await asyncio.sleep(0.1)
