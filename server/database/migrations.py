"""The app's migration files: `migrations/NNN_name.sql` beside its schema.sql, each applied once, in order.

A migration says what a schema diff cannot guess (a rename, a backfill before a NOT NULL, a type change with its
own USING): it runs before schema.sql is compared with the database, inside the same transaction, so after it the
comparison finds nothing destructive left. Applied files are recorded in `_ripple_migrations` (server/system.sql).
A database made from scratch records every file without running it: schema.sql already describes where the
migrations lead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from server.errors import SchemaError

__all__ = ["Migration", "apply_migrations", "find_migrations"]

_NAME = re.compile(r"^\d+_[A-Za-z0-9_.-]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def find_migrations(schema_path: Path) -> list[Migration]:
    """The migration files beside `schema_path`, in name order (so `002_x.sql` before `010_y.sql`: number them with
    the same width). A `.sql` file there that is not named `NNN_name.sql` stops the start rather than being
    skipped, since a migration that silently never runs is the failure this exists to prevent."""
    folder = schema_path.parent / "migrations"
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.sql")):
        if not _NAME.match(path.name):
            raise SchemaError(
                f"migration file {path} is not named NNN_name.sql (digits, an underscore, a name); rename it so "
                "it sorts where it should run"
            )
        found.append(Migration(path.name, path.read_text()))
    return found


async def apply_migrations(conn: asyncpg.Connection, migrations: list[Migration], *, fresh: bool) -> list[str]:
    """Run the migrations not yet recorded, in order, inside the caller's transaction; on a `fresh` database
    record them without running them. Returns the names run."""
    done = {r["name"] for r in await conn.fetch("SELECT name FROM _ripple_migrations")}
    ran = []
    for migration in migrations:
        if migration.name in done:
            continue
        if not fresh:
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                raise SchemaError(
                    f"migration {migration.name} failed: {exc}; nothing was changed (fix the file and start again)"
                ) from exc
            ran.append(migration.name)
        await conn.execute(
            "INSERT INTO _ripple_migrations (name, digest, ran) VALUES ($1, $2, $3)",
            migration.name,
            migration.digest,
            not fresh,
        )
    return ran
