"""`ctx.storage`, as Convex's: upload URLs, file URLs, deletes, and (in actions) storing and reading bytes.

A file is its bytes in a `Blobs` backend (server/storage.py: a directory by default) plus its `_storage` row. The
bytes are stored first, under the file's id, and the row inserted after, so every row has its bytes. A delete
removes the row in the caller's transaction and the bytes only once that has committed (a mutation that rolls
back or is retried keeps its file). A crash between the two (either way round) leaves bytes without a row, which
nothing serves: the orphan sweep (server/storage_sweep.py) removes them once they are older than a grace period.

Upload URLs are one-time tokens: their SHA-256 is a row of `_ripple_storage_uploads` with an expiry, inserted in
the mutation's transaction (so a mutation that fails makes no usable URL) and deleted by the upload that uses it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from server.database.database import Database
from server.database.ids import new_id
from server.database.transaction import DatabaseReader, Transaction
from server.errors import ArgumentError, IdError

__all__ = [
    "STORAGE_TABLE",
    "ActionStorage",
    "Blobs",
    "FileTooLarge",
    "MutationStorage",
    "QueryStorage",
    "Storage",
    "Stored",
    "copy_counted",
    "sha256_b64",
]

STORAGE_TABLE = "_storage"

_INSERT = "INSERT INTO _storage (_id, _creation_time, sha256, size, content_type) VALUES ($1, $2, $3, $4, $5)"
_DELETE = "DELETE FROM _storage WHERE _id = $1 RETURNING 1"
_ROW = "SELECT _id, sha256, size, content_type FROM _storage WHERE _id = $1"
_NEW_UPLOAD = (
    "INSERT INTO _ripple_storage_uploads (token_hash, expires_at) VALUES ($1, now() + make_interval(secs => $2))"
)
# Takes the token (a second use finds no row) and drops expired ones while at it.
_USE_UPLOAD = """
WITH used AS (DELETE FROM _ripple_storage_uploads WHERE token_hash = $1 RETURNING expires_at),
     stale AS (DELETE FROM _ripple_storage_uploads WHERE expires_at < now() AND token_hash <> $1)
SELECT expires_at > now() FROM used
"""


class FileTooLarge(Exception):
    """The bytes passed the upload limit; nothing was stored."""


@dataclass(frozen=True, slots=True)
class Stored:
    sha256: str  # base64, as Convex's `_storage.sha256`
    size: int


class Blobs(Protocol):
    """Where file bytes live, by storage id: server/storage.py's `DirectoryBlobs`, server/storage_s3.py's `S3Blobs`."""

    async def write(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int) -> Stored:
        """Store all of `chunks` under `key`, all or nothing: raises FileTooLarge past `max_bytes`, leaving nothing."""
        ...

    def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `start` to `end` inclusive of a stored file."""
        ...

    async def remove(self, key: str) -> None:
        """Forget the bytes under `key`; no error when there are none."""
        ...

    def written_before(self, cutoff_s: float) -> AsyncIterator[str]:
        """Every storage id whose bytes were written before `cutoff_s` (epoch seconds): the orphan sweep's
        candidates. Names that are not storage ids (other objects under an S3 prefix) are never listed."""
        ...

    async def remove_partial(self, cutoff_s: float) -> int:
        """Remove what writes interrupted by a crash left (their last byte written before `cutoff_s`); returns how
        many. Nothing to do where a write is atomic (an S3 PUT)."""
        ...


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _once(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


class Storage:
    """The process's file storage: the backend, the database, and the URLs it hands out."""

    def __init__(
        self,
        database: Database,
        blobs: Blobs,
        base_url: str,
        *,
        max_upload_bytes: int = 20 * 1024 * 1024,
        upload_url_ttl_s: float = 3600.0,
    ) -> None:
        self.database = database
        self.blobs = blobs
        # Where clients reach this server (RIPPLE_PUBLIC_URL): file and upload URLs are absolute, as Convex's.
        self.base_url = base_url.rstrip("/")
        self.max_upload_bytes = max_upload_bytes
        self.upload_url_ttl_s = upload_url_ttl_s

    def file_url(self, storage_id: str) -> str:
        return f"{self.base_url}/api/storage/{storage_id}"

    async def new_upload_url(self, tx: Transaction) -> str:
        token = secrets.token_urlsafe(32)
        await tx.conn.execute(_NEW_UPLOAD, _token_hash(token), self.upload_url_ttl_s)
        return f"{self.base_url}/api/storage/upload?token={token}"

    async def use_upload_token(self, token: str) -> bool:
        """True once for a token that was made and has not expired; every later use, and a made-up token: False."""
        valid = await self.database.pool.fetchval(_USE_UPLOAD, _token_hash(token))
        return bool(valid)

    async def store(self, chunks: AsyncIterable[bytes], content_type: str | None) -> str:
        """Store the bytes, then insert their `_storage` row; returns the new storage id.

        Raises:
            FileTooLarge: past `max_upload_bytes`; nothing was stored.
        """
        table = self.database.catalog.table(STORAGE_TABLE)
        storage_id = new_id(table.number)
        stored = await self.blobs.write(storage_id, chunks, self.max_upload_bytes)

        async def insert(tx: Transaction) -> None:
            tx.count_write(table)
            tx.changed = True
            await tx.conn.execute(
                _INSERT, storage_id, time.time() * 1000.0, stored.sha256, float(stored.size), content_type
            )

        try:
            await self.database.mutate(insert)
        except BaseException:
            await self.blobs.remove(storage_id)
            raise
        return storage_id

    async def row(self, storage_id: str) -> dict[str, Any] | None:
        """A file's row (`_id`, `sha256`, `size`, `content_type`) outside any function, or None."""
        record = await self.database.pool.fetchrow(_ROW, storage_id)
        return dict(record) if record is not None else None

    async def delete_row(self, tx: Transaction, storage_id: str) -> bool:
        _storage_table(tx, storage_id, "delete")
        tx.count_write(tx.catalog.table(STORAGE_TABLE))
        if await tx.conn.fetchval(_DELETE, storage_id) is None:
            return False
        tx.changed = True
        return True

    async def read_all(self, storage_id: str, size: int) -> bytes:
        parts = [chunk async for chunk in self.blobs.read(storage_id, 0, size - 1)] if size else []
        return b"".join(parts)


def _storage_table(tx: Transaction, storage_id: Any, what: str) -> None:
    table = tx.table_of(storage_id, f"ctx.storage.{what}: the storage id")
    if table.name != STORAGE_TABLE:
        raise IdError(
            f'ctx.storage.{what}: "{storage_id}" is an id of "{table.convex_name}", not of "_storage"; pass the '
            "storage id an upload returned"
        )


async def _url_in(storage: Storage, tx: Transaction, storage_id: str) -> str | None:
    _storage_table(tx, storage_id, "get_url")
    doc = await DatabaseReader(tx).get(storage_id)  # a recorded read: a subscribed query sees the file come and go
    return storage.file_url(storage_id) if doc is not None else None


def _unavailable() -> ArgumentError:
    return ArgumentError("file storage is not set up in this process (the server starts it; see the README)")


class QueryStorage:
    """`ctx.storage` of a query: `get_url`."""

    def __init__(self, storage: Storage | None, tx: Transaction) -> None:
        self._storage = storage
        self._tx = tx

    async def get_url(self, storage_id: str) -> str | None:
        """A URL that serves the file, or None when there is no such file (any more)."""
        if self._storage is None:
            raise _unavailable()
        return await _url_in(self._storage, self._tx, storage_id)


class MutationStorage(QueryStorage):
    """`ctx.storage` of a mutation: as a query's, plus `generate_upload_url` and `delete`. A delete's bytes are
    removed by `after_commit`, which the runner calls once the mutation has committed."""

    def __init__(self, storage: Storage | None, tx: Transaction) -> None:
        super().__init__(storage, tx)
        self.deleted: list[str] = []

    async def generate_upload_url(self) -> str:
        """A one-time URL to POST a file's bytes to (Content-Type: its type); it answers {"storageId": ...}."""
        if self._storage is None:
            raise _unavailable()
        return await self._storage.new_upload_url(self._tx)

    async def delete(self, storage_id: str) -> None:
        """Delete the file; its URL stops serving once this mutation commits."""
        if self._storage is None:
            raise _unavailable()
        if not await self._storage.delete_row(self._tx, storage_id):
            raise ArgumentError(f'ctx.storage.delete: no file has storage id "{storage_id}"')
        self.deleted.append(storage_id)

    async def after_commit(self) -> None:
        if self._storage is not None:
            for storage_id in self.deleted:
                await self._storage.blobs.remove(storage_id)


WriteFn = Callable[[Callable[[Transaction], Awaitable[Any]]], Awaitable[Any]]


class ActionStorage:
    """`ctx.storage` of an action: each call is its own small read or mutation, as Convex's."""

    def __init__(self, storage: Storage | None) -> None:
        self._storage = storage

    def _need(self) -> Storage:
        if self._storage is None:
            raise _unavailable()
        return self._storage

    async def generate_upload_url(self) -> str:
        storage = self._need()

        async def op(tx: Transaction) -> str:
            tx.changed = True
            return await storage.new_upload_url(tx)

        return str((await storage.database.mutate(op)).value)

    async def get_url(self, storage_id: str) -> str | None:
        storage = self._need()

        async def op(tx: Transaction) -> str | None:
            return await _url_in(storage, tx, storage_id)

        return (await storage.database.read(op))[0]

    async def delete(self, storage_id: str) -> None:
        storage = self._need()

        async def op(tx: Transaction) -> bool:
            return await storage.delete_row(tx, storage_id)

        if not (await storage.database.mutate(op)).value:
            raise ArgumentError(f'ctx.storage.delete: no file has storage id "{storage_id}"')
        await storage.blobs.remove(storage_id)

    async def store(self, data: bytes, content_type: str | None = None) -> str:
        """Store `data` as a new file; returns its storage id."""
        storage = self._need()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ArgumentError(f"ctx.storage.store takes bytes, got {type(data).__name__}")
        try:
            return await storage.store(_once(bytes(data)), content_type)
        except FileTooLarge:
            raise ArgumentError(
                f"ctx.storage.store: {len(data)} bytes is over the {storage.max_upload_bytes}-byte limit "
                "(RIPPLE_STORAGE_MAX_UPLOAD_BYTES)"
            ) from None

    async def get(self, storage_id: str) -> bytes | None:
        """The file's bytes, or None when there is no such file."""
        storage = self._need()

        async def op(tx: Transaction) -> dict[str, Any] | None:
            _storage_table(tx, storage_id, "get")
            return await DatabaseReader(tx).get(storage_id)

        doc = (await storage.database.read(op))[0]
        if doc is None:
            return None
        try:
            return await storage.read_all(storage_id, int(doc["size"]))
        except FileNotFoundError:
            return None  # deleted since the read


async def copy_counted(chunks: AsyncIterable[bytes], max_bytes: int, sink: IO[bytes]) -> Stored:
    """Copy an upload into `sink` (writes in a thread: a file or a spool), hashing and counting it as it comes.

    Raises:
        FileTooLarge: past `max_bytes`; what was copied is the caller's to throw away.
    """
    digest = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise FileTooLarge(f"over {max_bytes} bytes")
        digest.update(chunk)
        await asyncio.to_thread(sink.write, chunk)
    return Stored(sha256_b64(digest.digest()), size)


def sha256_b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
