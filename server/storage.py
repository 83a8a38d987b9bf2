"""File storage over HTTP, and the directory backend that keeps the bytes.

* `POST /api/storage/upload?token=...`: the bytes of one file (its Content-Type kept), to a URL made by
  `ctx.storage.generate_upload_url()`, used once; answers `{"storageId": ...}`. Past the upload limit: 413, nothing
  stored.
* `GET /api/storage/{storageId}`: the file, with its content type and ETag (its SHA-256); `If-None-Match` → 304;
  one `Range` → 206, or 416 when it lies past the end. Anyone with the URL can read it (as in Convex: the id is the
  secret; serve private files through your own function instead).

`DirectoryBlobs` keeps one file per storage id under a directory (`RIPPLE_STORAGE_DIR`, by default `storage/` in
the data directory): written to a temporary file, flushed to disk, then renamed, so a file is there whole or not
at all (a crash mid-write leaves only a hidden `.<id>.<random>.tmp`, which the orphan sweep removes). `S3Blobs`
(server/storage_s3.py) keeps them in an S3-compatible store instead; `blobs_for` picks one from the settings. Both
implement the `Blobs` protocol (server/functions/storage_ctx.py), and the HTTP side here is the same for both.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server.database.ids import table_number_of
from server.functions.storage_ctx import STORAGE_TABLE, FileTooLarge, Storage, Stored, copy_counted

if TYPE_CHECKING:
    from server.app import Services
    from server.config import Settings
    from server.functions.storage_ctx import Blobs

__all__ = ["DirectoryBlobs", "blobs_for", "routes"]

_CHUNK = 256 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_STORAGE_ID = re.compile(r"[0-9a-f]{36}")
_FAN_OUT = re.compile(r"[0-9a-f]{2}")
_PARTIAL = re.compile(r"\.[0-9a-f]{36}\.[0-9a-f]{32}\.tmp")


class DirectoryBlobs:
    """Bytes as files named by storage id, two levels of fan-out (`ab/cd/<id>`), so no directory grows huge."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not _STORAGE_ID.fullmatch(key):
            raise ValueError(f"not a storage id: {key!r}")
        return self.root / key[:2] / key[2:4] / key

    async def write(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int) -> Stored:
        final = self._path(key)
        await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
        temp = final.parent / f".{key}.{uuid.uuid4().hex}.tmp"
        handle: BinaryIO = await asyncio.to_thread(open, temp, "xb")
        try:
            try:
                stored = await copy_counted(chunks, max_bytes, handle)
                await asyncio.to_thread(_flush, handle)
            finally:
                await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, temp, final)
        except BaseException:
            await asyncio.to_thread(_unlink, temp)
            raise
        return stored

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        handle: BinaryIO = await asyncio.to_thread(open, self._path(key), "rb")
        try:
            await asyncio.to_thread(handle.seek, start)
            left = end - start + 1
            while left > 0:
                chunk = await asyncio.to_thread(handle.read, min(_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def remove(self, key: str) -> None:
        await asyncio.to_thread(_unlink, self._path(key))

    async def written_before(self, cutoff_s: float) -> AsyncIterator[str]:
        # One leaf directory per thread hop: a large store is listed without blocking the event loop for long.
        for leaf in await asyncio.to_thread(self._leaves):
            for name, modified_s in await asyncio.to_thread(_entries, leaf):
                if modified_s < cutoff_s and _STORAGE_ID.fullmatch(name) and name[:4] == leaf.parent.name + leaf.name:
                    yield name

    async def remove_partial(self, cutoff_s: float) -> int:
        removed = 0
        for leaf in await asyncio.to_thread(self._leaves):
            for name, modified_s in await asyncio.to_thread(_entries, leaf):
                if modified_s < cutoff_s and _PARTIAL.fullmatch(name):
                    await asyncio.to_thread(_unlink, leaf / name)
                    removed += 1
        return removed

    def _leaves(self) -> list[Path]:
        """The `ab/cd` directories (only those: anything else under the root is not ours to judge)."""
        return [leaf for top in _subdirectories(self.root) for leaf in _subdirectories(top)]


async def blobs_for(settings: Settings) -> Blobs:
    """The backend the settings choose, checked usable (an S3 bucket that is missing or refused stops the start).

    Raises:
        S3StorageError: the S3 bucket cannot be used; the message says why.
    """
    if settings.storage_kind() == "directory":
        return DirectoryBlobs(settings.storage_path())
    from server.storage_s3 import S3Blobs  # boto3 is imported only by a process that uses it

    assert settings.storage_s3_bucket is not None  # Settings refuses s3 without a bucket
    blobs = S3Blobs.connect(
        settings.storage_s3_bucket,
        prefix=settings.storage_s3_prefix,
        endpoint_url=settings.storage_s3_endpoint_url,
        region=settings.storage_s3_region,
        addressing_style=settings.storage_s3_addressing_style,
    )
    await blobs.check()
    return blobs


def _flush(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _subdirectories(path: Path) -> list[Path]:
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return []
    return [Path(e.path) for e in entries if _FAN_OUT.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]


def _entries(leaf: Path) -> list[tuple[str, float]]:
    """The files of one leaf directory with their last-modified times (epoch seconds)."""
    found = []
    try:
        with os.scandir(leaf) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        found.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
                except FileNotFoundError:
                    continue  # removed while listed
    except FileNotFoundError:
        return []
    return found


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _storage_of(request: Request) -> Storage:
    services: Services = request.app.state.services
    assert services.storage is not None
    return services.storage


def _too_large(storage: Storage) -> Response:
    return _error(
        413,
        "PayloadTooLarge",
        f"the file is over the {storage.max_upload_bytes}-byte upload limit (RIPPLE_STORAGE_MAX_UPLOAD_BYTES); "
        "nothing was stored",
    )


async def upload(request: Request) -> Response:
    storage = _storage_of(request)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > storage.max_upload_bytes:
        return _too_large(storage)  # refused before the token is used: the URL still works for a smaller file
    token = request.query_params.get("token", "")
    if not token or not await storage.use_upload_token(token):
        return _error(
            403,
            "InvalidUploadUrl",
            "this upload URL is not valid: it expired or was already used (each works once); get a new one from "
            "ctx.storage.generate_upload_url()",
        )
    content_type = request.headers.get("content-type") or None
    try:
        storage_id = await storage.store(request.stream(), content_type)
    except FileTooLarge:
        return _too_large(storage)
    return JSONResponse({"storageId": storage_id})


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The one range `header` asks for, clipped to the file, or None when it is unsatisfiable.

    Raises:
        ValueError: the header is not one `bytes=` range (it is then ignored, as RFC 9110 allows).
    """
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise ValueError(header)
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        n = int(last)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end


async def serve(request: Request) -> Response:
    storage = _storage_of(request)
    storage_id = request.path_params["storage_id"]
    table = storage.database.catalog.table(STORAGE_TABLE)
    row = await storage.row(storage_id) if table_number_of(storage_id) == table.number else None
    if row is None:
        return _error(404, "FileNotFound", f'no file has storage id "{storage_id}" (it was deleted, or never stored)')
    size = int(row["size"])
    etag = f'"{row["sha256"]}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=2592000"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    media_type = row["content_type"] or "application/octet-stream"
    start, end, status = 0, size - 1, 200
    range_header = request.headers.get("range")
    if range_header is not None:
        try:
            chosen = _byte_range(range_header, size)
        except ValueError:
            chosen = (0, size - 1)
        else:
            if chosen is None:
                headers["Content-Range"] = f"bytes */{size}"
                return Response(status_code=416, headers=headers)
            status = 206
            headers["Content-Range"] = f"bytes {chosen[0]}-{chosen[1]}/{size}"
        start, end = chosen
    headers["Content-Length"] = str(max(end - start + 1, 0))
    if size == 0:
        return Response(b"", status_code=status, headers=headers, media_type=media_type)
    try:
        body = storage.blobs.read(storage_id, start, end)
        first = await anext(body)  # a file deleted since its row was read is a 404, not a broken 200
    except (FileNotFoundError, StopAsyncIteration):
        return _error(404, "FileNotFound", f'no file has storage id "{storage_id}" (it was deleted)')

    async def stream() -> AsyncIterator[bytes]:
        yield first
        async for chunk in body:
            yield chunk

    return StreamingResponse(stream(), status_code=status, headers=headers, media_type=media_type)


routes = [
    Route("/api/storage/upload", upload, methods=["POST"]),
    Route("/api/storage/{storage_id}", serve, methods=["GET", "HEAD"]),
]
