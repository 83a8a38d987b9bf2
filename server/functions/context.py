"""The `ctx` a handler receives: `QueryCtx`, `MutationCtx` or `ActionCtx`, as in Convex.

Queries and mutations get `ctx.db`; actions get none and call other functions through `ctx.run_query`,
`ctx.run_mutation` and `ctx.run_action`, each in its own transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from server.database.transaction import DatabaseReader, DatabaseWriter
from server.errors import AuthRequired

__all__ = ["ActionCtx", "Auth", "Caller", "MutationCtx", "QueryCtx"]


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


class QueryCtx:
    def __init__(self, db: DatabaseReader, auth: Auth) -> None:
        self.db = db
        self.auth = auth


class MutationCtx:
    def __init__(self, db: DatabaseWriter, auth: Auth) -> None:
        self.db = db
        self.auth = auth


RunFn = Callable[[Any, dict[str, Any] | None], Awaitable[Any]]


class ActionCtx:
    def __init__(self, auth: Auth, run_query: RunFn, run_mutation: RunFn, run_action: RunFn) -> None:
        self.auth = auth
        self._run_query = run_query
        self._run_mutation = run_mutation
        self._run_action = run_action

    async def run_query(self, fn: Any, args: dict[str, Any] | None = None) -> Any:
        return await self._run_query(fn, args)

    async def run_mutation(self, fn: Any, args: dict[str, Any] | None = None) -> Any:
        return await self._run_mutation(fn, args)

    async def run_action(self, fn: Any, args: dict[str, Any] | None = None) -> Any:
        return await self._run_action(fn, args)
