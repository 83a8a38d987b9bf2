"""The S3 backend of file storage: a file's bytes are one object of any S3-compatible store (AWS S3, MinIO, R2...).

Chosen with `RIPPLE_STORAGE_BACKEND=s3` or by setting `RIPPLE_STORAGE_S3_BUCKET`; credentials come from the usual
AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE`, an instance role), read
by boto3 itself, so nothing secret passes through Ripple's settings.

* boto3 is synchronous: each call, and each chunk read of a download, runs in `asyncio.to_thread` (boto3's client
  is thread-safe). aiobotocore would avoid the threads but pins botocore to narrow ranges that clash with other
  packages; the thread hop costs microseconds next to a network round trip.
* An upload is spooled (memory, then a temporary file past 1 MiB) while its SHA-256 and size are counted, and sent
  with one PUT only once it is whole and within the limit: an oversized or broken upload leaves no object, and an
  object is there whole or not at all (a PUT is atomic). One PUT takes up to 5 GiB, far above the upload limit.
* Files are served THROUGH Ripple, each response streamed from a ranged GET of the object, not by redirecting to
  a presigned URL: responses keep the directory backend's headers exactly (ETag = the SHA-256, so If-None-Match
  and caches behave the same whichever backend stored a file; 304 and 416 answered without touching S3), the
  bucket stays private, and the store need not be reachable from clients (MinIO on a private network). The cost
  is the bytes passing through this process; put a CDN in front of `/api/storage/` when that matters.
* The orphan sweep lists `<prefix>` and removes objects named by a storage id that no `_storage` row names, so a
  prefix (or a bucket, without one) belongs to ONE deployment: two databases sharing a prefix would delete each
  other's files. Other keys under the prefix are left alone.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from server.functions.storage_ctx import Stored, copy_counted

__all__ = ["S3Blobs", "S3StorageError"]

_CHUNK = 256 * 1024
_SPOOL_IN_MEMORY = 1024 * 1024
_MISSING = {"NoSuchKey", "404", "NotFound"}
_STORAGE_ID = re.compile(r"[0-9a-f]{36}")


class S3StorageError(RuntimeError):
    """The store could not be reached or refused the bucket; the message says which and what to check."""


class S3Blobs:
    """Bytes as objects `<prefix><storage id>` of one bucket."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def connect(
        cls,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
    ) -> S3Blobs:
        """A client for `bucket`: endpoint and region as given, else from the AWS variables (`AWS_ENDPOINT_URL`,
        `AWS_DEFAULT_REGION`), credentials from the AWS chain."""
        config = Config(
            s3={"addressing_style": addressing_style},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=60,
            # A download holds a connection while it streams; the default 10 would make concurrent ones queue.
            max_pool_connections=64,
        )
        client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        return cls(client, bucket, prefix)

    def _key(self, storage_id: str) -> str:
        if not _STORAGE_ID.fullmatch(storage_id):
            raise ValueError(f"not a storage id: {storage_id!r}")
        return self.prefix + storage_id

    async def check(self) -> None:
        """Fail the start, saying why, when the bucket cannot be used (rather than every upload failing later).

        Raises:
            S3StorageError: the bucket does not exist, access is denied, or the store cannot be reached.
        """
        try:
            await asyncio.to_thread(self.client.head_bucket, Bucket=self.bucket)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            endpoint = self.client.meta.endpoint_url
            if code in ("404", "NoSuchBucket"):
                raise S3StorageError(
                    f"the S3 bucket {self.bucket!r} (RIPPLE_STORAGE_S3_BUCKET) does not exist at {endpoint}: create "
                    "it, or check RIPPLE_STORAGE_S3_ENDPOINT_URL and RIPPLE_STORAGE_S3_REGION"
                ) from None
            raise S3StorageError(
                f"the S3 bucket {self.bucket!r} at {endpoint} refused access ({code}): check the AWS credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the bucket's policy"
            ) from None
        except BotoCoreError as error:
            raise S3StorageError(
                f"cannot reach the S3 store for bucket {self.bucket!r}: {error}; check RIPPLE_STORAGE_S3_ENDPOINT_URL, "
                "RIPPLE_STORAGE_S3_REGION and the AWS credentials"
            ) from None

    async def write(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int) -> Stored:
        object_key = self._key(key)
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        try:
            stored = await copy_counted(chunks, max_bytes, spool)
            await asyncio.to_thread(spool.seek, 0)
            await asyncio.to_thread(
                self.client.put_object, Bucket=self.bucket, Key=object_key, Body=spool, ContentLength=stored.size
            )
        finally:
            await asyncio.to_thread(spool.close)
        return stored

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `start`..`end` of the object, by one ranged GET streamed in chunks.

        Raises:
            FileNotFoundError: there is no such object (deleted since its row was read).
        """
        object_key = self._key(key)
        try:
            response = await asyncio.to_thread(
                self.client.get_object, Bucket=self.bucket, Key=object_key, Range=f"bytes={start}-{end}"
            )
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code", "")) in _MISSING:
                raise FileNotFoundError(object_key) from None
            raise
        body = response["Body"]
        try:
            while True:
                chunk = await asyncio.to_thread(body.read, _CHUNK)
                if not chunk:
                    break
                yield chunk
        finally:
            await asyncio.to_thread(body.close)

    async def remove(self, key: str) -> None:
        # S3 answers a delete of a missing key with success, as the protocol asks.
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    async def written_before(self, cutoff_s: float) -> AsyncIterator[str]:
        """Page by page (1,000 keys each, one thread hop per page), the storage ids under the prefix whose object's
        LastModified (the end of its PUT) is before `cutoff_s`."""
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            page = await asyncio.to_thread(self.client.list_objects_v2, **request)
            for item in page.get("Contents", []):
                storage_id = str(item["Key"])[len(self.prefix) :]
                if _STORAGE_ID.fullmatch(storage_id) and item["LastModified"].timestamp() < cutoff_s:
                    yield storage_id
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    async def remove_partial(self, cutoff_s: float) -> int:
        return 0  # a PUT is atomic: an interrupted one leaves no object
