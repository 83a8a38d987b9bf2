"""The orphan sweep: file bytes that no `_storage` row names, and older than a grace period, are removed.

Orphans arise from a crash between a file's bytes being written and its row being inserted (server/functions/
storage_ctx.py `Storage.store`), or between a delete's commit and the bytes' removal; nothing serves them.

A task of the storage module, not a cron job: crons run a project's functions, and this is Ripple's upkeep of its
own backend (it lists the directory or the bucket, which no function can), wanted whatever crons a project
declares and whether crons run in this process (`RIPPLE_CRONS_ENABLED`).

Why it is safe:
* Only bytes last written more than `grace_s` ago are candidates; a younger file without a row may be an upload in
  flight (its bytes are written first). Its row is looked up after the listing, so a file is removed only when its
  row was still missing a whole grace period after its bytes were complete.
* One process sweeps at a time: a sweep runs in a transaction holding a transaction-level advisory lock (also safe
  behind a transaction pooler); a process that finds it taken skips its turn. Were two to sweep at once anyway,
  removing bytes is idempotent.
* Only names that are storage ids of this database's `_storage` table are considered (server/storage_s3.py: a
  prefix belongs to one deployment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import asyncpg

from server.database.ids import table_number_of
from server.functions.storage_ctx import STORAGE_TABLE, Storage
from server.hub.supervise import Supervisor

__all__ = ["OrphanSweep", "SweepReport"]

log = logging.getLogger("ripple.storage")

# Held for the length of one sweep; other Ripple keys are ...001 (schema) and ...002 (the commit clock).
_SWEEP_LOCK_KEY = 7264001000000000003
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
_NAMED = "SELECT _id FROM _storage WHERE _id = ANY($1::text[])"
_BATCH = 500
# The first sweep waits this long after start (at most the interval), so short-lived processes (tests, `ripple
# run`) do not each list the store; then one every interval.
_FIRST_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class SweepReport:
    checked: int  # files older than the grace period, looked up in `_storage`
    removed: int  # of those, the ones no row named: removed
    partial: int  # leftovers of interrupted writes removed (directory backend)


class OrphanSweep:
    """Sweeps one process's storage every `interval_s` (0: never) once `start()`ed, until `close()`."""

    def __init__(self, storage: Storage, *, grace_s: float, interval_s: float) -> None:
        self.storage = storage
        self.grace_s = grace_s
        self.interval_s = interval_s
        self._supervisor = Supervisor()

    def start(self) -> None:
        if self.interval_s > 0:
            self._supervisor.start("storage-sweep", self._loop)

    async def close(self) -> None:
        await self._supervisor.close()

    async def _loop(self) -> None:
        await asyncio.sleep(min(self.interval_s, _FIRST_AFTER_S))
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("storage sweep failed; the next one is in %g s", self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def sweep(self) -> SweepReport | None:
        """Remove every orphan older than the grace period; None when another process is sweeping now."""
        cutoff_s = time.time() - self.grace_s
        blobs = self.storage.blobs
        number = self.storage.database.catalog.table(STORAGE_TABLE).number
        async with self.storage.database.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_TRY_LOCK, _SWEEP_LOCK_KEY):
                log.debug("storage sweep skipped: another process is sweeping")
                return None
            partial = await blobs.remove_partial(cutoff_s)
            checked = removed = 0
            batch: list[str] = []
            async for key in blobs.written_before(cutoff_s):
                if table_number_of(key) != number:
                    continue
                batch.append(key)
                if len(batch) >= _BATCH:
                    removed += await self._remove_unnamed(conn, batch)
                    checked += len(batch)
                    batch = []
            if batch:
                removed += await self._remove_unnamed(conn, batch)
                checked += len(batch)
        log.info(
            "storage sweep: %d files older than %g s checked, %d orphans removed, %d interrupted writes removed",
            checked,
            self.grace_s,
            removed,
            partial,
        )
        return SweepReport(checked, removed, partial)

    async def _remove_unnamed(self, conn: asyncpg.Connection, keys: list[str]) -> int:
        named = {row["_id"] for row in await conn.fetch(_NAMED, keys)}
        orphans = [key for key in keys if key not in named]
        for key in orphans:
            with contextlib.suppress(FileNotFoundError):
                await self.storage.blobs.remove(key)
        return len(orphans)
