"""The `ctx` a handler receives: `QueryCtx`, `MutationCtx` or `ActionCtx`, as in Convex.

Queries and mutations get `ctx.db`; actions get none and call other functions through `ctx.run_query`,
`ctx.run_mutation` and `ctx.run_action`, each in its own transaction. Mutations and actions get `ctx.scheduler`
(scheduling.py); every function gets `ctx.storage` (storage_ctx.py). System tables (`_scheduled_functions`,
`_storage`) are read through `ctx.db.system`, as in Convex, and are never written by functions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from server.database.query import Query
from server.database.transaction import DatabaseReader, DatabaseWriter, Transaction
from server.errors import ArgumentError, AuthRequired
from server.functions.scheduling import Scheduler
from server.functions.storage_ctx import ActionStorage, MutationStorage, QueryStorage

__all__ = ["ActionCtx", "Auth", "Caller", "MutationCtx", "QueryCtx", "QueryDb", "MutationDb", "SystemReader"]


class Identity(Protocol):
    @property
    def token_identifier(self) -> str: ...

    def to_user_identity(self) -> dict[str, Any]: ...


class Caller:
    """Who is calling: a verified identity, an admin key holder, both, or neither."""

    __slots__ = ("_cache_key", "identity", "is_admin")

    def __init__(self, identity: Identity | None = None, *, is_admin: bool = False) -> None:
        self.identity = identity
        self.is_admin = is_admin
        self._cache_key: tuple[str | None, bool] | None = None

    @property
    def principal(self) -> tuple[str | None, bool]:
        """Who this is, whatever token says so: a refreshed token of the same user is the same principal (a resent
        mutation replays for it)."""
        return (self.identity.token_identifier if self.identity else None, self.is_admin)

    @property
    def cache_key(self) -> tuple[str | None, bool]:
        """What a query that reads `ctx.auth` can see of this caller: the whole identity its handler gets, so two
        tokens of one user with other claims (a refresh with a new name, say) never share a result."""
        if self._cache_key is None:
            seen = self.identity.to_user_identity() if self.identity else None
            self._cache_key = (
                orjson.dumps(seen, option=orjson.OPT_SORT_KEYS).decode() if seen else None,
                self.is_admin,
            )
        return self._cache_key


class Auth:
    """`ctx.auth`. Notes whether the function looked at the identity: only then do results depend on it."""

    def __init__(self, caller: Caller) -> None:
        self._caller = caller
        self.read = False

    async def get_user_identity(self) -> dict[str, Any] | None:
        self.read = True
        identity = self._caller.identity
        return identity.to_user_identity() if identity is not None else None

    async def require_user(self, action: str = "call this function") -> dict[str, Any]:
        """The identity, or a clear error for a caller who is not signed in."""
        identity = await self.get_user_identity()
        if identity is None:
            raise AuthRequired(f"You must be signed in to {action}.")
        return identity

    @property
    def is_admin(self) -> bool:
        self.read = True
        return self._caller.is_admin

    def require_admin(self, action: str = "call this function") -> None:
        if not self.is_admin:
            raise AuthRequired(f"Only a trusted worker with the admin key may {action} (Authorization: Convex <key>).")


def _is_system(table_name: str) -> bool:
    return table_name.startswith("_")


class SystemReader:
    """`ctx.db.system`: reads of system tables only (Convex keeps them out of `ctx.db.get/query`)."""

    def __init__(self, tx: Transaction) -> None:
        self._reader = DatabaseReader(tx)
        self._tx = tx

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        table = self._tx.table_of(doc_id)
        if not _is_system(table.name):
            raise ArgumentError(f'ctx.db.system.get: "{doc_id}" is a document of "{table.convex_name}"; use ctx.db.get')
        return await self._reader.get(doc_id)

    def query(self, table: str) -> Query:
        found = self._tx.catalog.table(table)
        if not _is_system(found.name):
            raise ArgumentError(f'ctx.db.system.query: "{table}" is not a system table; use ctx.db.query')
        return self._reader.query(table)


def _refuse_system(tx: Transaction, table_name: str, what: str) -> None:
    if _is_system(tx.catalog.table(table_name).name):
        raise ArgumentError(f'{what}: "{table_name}" is a system table; read it through ctx.db.system.{what}')


class _AppTables(DatabaseReader):
    """`get`/`query` of app tables only, and `system` for system tables, as Convex's `ctx.db`."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__(tx)
        self.system = SystemReader(tx)

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        table = self._tx.table_of(doc_id)
        if _is_system(table.name):
            raise ArgumentError(f'get: "{doc_id}" is a document of system table "{table.name}"; use ctx.db.system.get')
        return await super().get(doc_id)

    def query(self, table: str) -> Query:
        _refuse_system(self._tx, table, "query")
        return super().query(table)


class QueryDb(_AppTables):
    """`ctx.db` of a query: app tables, and `system` for system tables."""


class MutationDb(_AppTables, DatabaseWriter):
    """`ctx.db` of a mutation: as `QueryDb`, plus writes, which system tables refuse (the server keeps them)."""

    def _writable(self, doc_id: str, verb: str) -> None:
        table = self._tx.table_of(doc_id)
        if _is_system(table.name):
            raise ArgumentError(
                f'{verb}: "{doc_id}" is a document of system table "{table.name}", which only the '
                "server writes (cancel a scheduled function with ctx.scheduler.cancel, delete a file with "
                "ctx.storage.delete)"
            )

    async def insert(self, table_name: str, document: Any) -> str:
        if _is_system(self._tx.catalog.table(table_name).name):
            raise ArgumentError(
                f'insert: "{table_name}" is a system table, which only the server writes '
                "(schedule a function with ctx.scheduler.run_after or run_at)"
            )
        return await super().insert(table_name, document)

    async def patch(self, doc_id: str, fields: Any) -> None:
        self._writable(doc_id, "patch")
        await super().patch(doc_id, fields)

    async def replace(self, doc_id: str, document: Any) -> None:
        self._writable(doc_id, "replace")
        await super().replace(doc_id, document)

    async def delete(self, doc_id: str) -> None:
        self._writable(doc_id, "delete")
        await super().delete(doc_id)


class QueryCtx:
    def __init__(self, db: DatabaseReader, auth: Auth, storage: QueryStorage | None = None) -> None:
        self.db = db
        self.auth = auth
        self.storage = storage


class MutationCtx:
    def __init__(
        self,
        db: DatabaseWriter,
        auth: Auth,
        scheduler: Scheduler | None = None,
        storage: MutationStorage | None = None,
    ) -> None:
        self.db = db
        self.auth = auth
        self.scheduler = scheduler
        self.storage = storage


RunFn = Callable[[Any, dict[str, Any] | None], Awaitable[Any]]


class ActionCtx:
    def __init__(
        self,
        auth: Auth,
        run_query: RunFn,
        run_mutation: RunFn,
        run_action: RunFn,
        scheduler: Scheduler | None = None,
        storage: ActionStorage | None = None,
    ) -> None:
        self.auth = auth
        self.scheduler = scheduler
        self.storage = storage
        self._run_query = run_query
        self._run_mutation = run_mutation
        self._run_action = run_action

    async def run_query(self, fn: Any, args: dict[str, Any] | None = None) -> Any:
        return await self._run_query(fn, args)

    async def run_mutation(self, fn: Any, args: dict[str, Any] | None = None) -> Any:
        return await self._run_mutation(fn, args)

    async def run_action(self, fn: Any, args: dict[str, Any] | None = None) -> Any:
        return await self._run_action(fn, args)
