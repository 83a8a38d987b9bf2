"""What only the S3 backend has (server/storage_s3.py): its settings, its start-up check, large files streamed in
chunks, objects gone from the bucket. The behaviour it shares with the directory backend is tested, for both, in
tests/test_storage.py."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from pydantic import ValidationError

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from server.config import Settings
from server.storage import DirectoryBlobs, blobs_for
from server.storage_s3 import S3Blobs, S3StorageError
from tests.support import s3
from tests.support import server as support_server
from tests.support.server import RippleServer, run_server


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3.moto_server() as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3.CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def test_the_backend_follows_the_settings() -> None:
    assert Settings(database_url="postgresql://x/y").storage_kind() == "directory"
    assert Settings(database_url="postgresql://x/y", storage_s3_bucket="b").storage_kind() == "s3"
    explicit = Settings(database_url="postgresql://x/y", storage_s3_bucket="b", storage_backend="directory")
    assert explicit.storage_kind() == "directory"
    with pytest.raises(ValidationError, match="RIPPLE_STORAGE_S3_BUCKET"):
        Settings(database_url="postgresql://x/y", storage_backend="s3")


async def test_a_missing_bucket_or_store_stops_the_start_saying_why(s3_endpoint: str, fresh_dsn: str) -> None:
    missing = support_server.test_settings(
        fresh_dsn, storage_s3_bucket="no-such-bucket", storage_s3_endpoint_url=s3_endpoint, storage_s3_region="x"
    )
    with pytest.raises(S3StorageError, match="'no-such-bucket'.*does not exist.*create it"):
        await blobs_for(missing)

    # A port nothing listens on (this server's, once stopped).
    with s3.moto_server() as gone:
        pass
    unreachable = support_server.test_settings(fresh_dsn, storage_s3_bucket="b-b-b", storage_s3_endpoint_url=gone)
    with pytest.raises(S3StorageError, match="cannot reach the S3 store"):
        await blobs_for(unreachable)

    bucket = s3.new_bucket(s3_endpoint)
    ok = support_server.test_settings(fresh_dsn, storage_s3_bucket=bucket, storage_s3_endpoint_url=s3_endpoint)
    assert isinstance(await blobs_for(ok), S3Blobs)
    assert isinstance(await blobs_for(support_server.test_settings(fresh_dsn)), DirectoryBlobs)


@pytest.fixture
async def big_files(fresh_dsn: str, s3_endpoint: str) -> AsyncIterator[RippleServer]:
    bucket = s3.new_bucket(s3_endpoint)
    async with run_server(
        fresh_dsn,
        storage_s3_bucket=bucket,
        storage_s3_endpoint_url=s3_endpoint,
        storage_s3_region=s3.REGION,
        storage_max_upload_bytes=8 * 1024 * 1024,
    ) as server:
        assert server.services.storage is not None
        server.services.storage.base_url = server.url
        yield server


async def test_a_large_file_is_spooled_up_and_streamed_down_in_ranges(big_files: RippleServer) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12_345)  # past the in-memory spool and many read chunks
    url = await big_files.call("testing:uploadUrl")
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(url, content=data, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        storage_id = response.json()["storageId"]
        bucket = big_files.settings.storage_s3_bucket
        assert bucket is not None
        endpoint = s3.client(str(big_files.settings.storage_s3_endpoint_url))
        assert endpoint.get_object(Bucket=bucket, Key=storage_id)["Body"].read() == data  # no prefix: the id alone

        file_url = f"{big_files.url}/api/storage/{storage_id}"
        whole = await http.get(file_url)
        assert whole.content == data and whole.headers["content-type"] == "image/png"
        assert whole.headers["etag"] == f'"{base64.b64encode(hashlib.sha256(data).digest()).decode()}"'
        start, end = 1_000_003, 2_600_000
        middle = await http.get(file_url, headers={"Range": f"bytes={start}-{end}"})
        assert middle.status_code == 206 and middle.content == data[start : end + 1]
        assert middle.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"

        # Bytes gone from the bucket behind Ripple's back (the row stays): a 404 that says so, never a broken 200.
        endpoint.delete_object(Bucket=bucket, Key=storage_id)
        gone = await http.get(file_url)
        assert gone.status_code == 404 and storage_id in gone.json()["message"]
