"""A function's typed parameters become a pydantic model that checks its arguments before the handler runs.

    @query
    async def list_by_parent(ctx, parent_id: Id("generations"), limit: int | None = None): ...

accepts `{"parentId": "<id>", "limit": 10}`: wire names are camelCase, unknown arguments are refused, and
`Id("table")` checks (without a query) that the id is well formed and names that table.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, create_model

from server.database.ids import table_number_of
from server.errors import ArgumentError, IdError
from server.values import to_camel

__all__ = ["Id", "args_model", "id_tables", "validate_args"]

# Table number → Convex table name, for the running catalog. Set by the runner around validation, so that
# `Id("videos")` needs no query and no global state.
id_tables: ContextVar[Mapping[int, str]] = ContextVar("id_tables", default=MappingProxyType({}))


class IdCheck:
    def __init__(self, table: str) -> None:
        self.table = table

    def __call__(self, value: str) -> str:
        number = table_number_of(value)
        tables = id_tables.get()
        if number is None or number not in tables:
            raise ValueError(f'must be Id("{self.table}"), got "{value}", which is not a document id')
        actual = tables[number]
        if actual != self.table:
            raise ValueError(f'must be Id("{self.table}"), got an id of table "{actual}"')
        return value


def Id(table: str) -> Any:
    """The type of a document id of `table` (its Convex name, e.g. "agentSessions")."""
    return Annotated[str, AfterValidator(IdCheck(table))]


def args_model(handler: Callable[..., Any]) -> type[BaseModel]:
    signature = inspect.signature(handler)
    hints = typing.get_type_hints(handler, include_extras=True)
    params = list(signature.parameters.values())[1:]  # the first is ctx
    fields: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{handler.__qualname__}: arguments must be named parameters, not *{p.name}")
        annotation = hints.get(p.name, Any)
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (annotation, default)
    config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=False, arbitrary_types_allowed=True)
    return create_model(f"{handler.__name__}_args", __config__=config, **fields)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "arguments"


def validate_args(path: str, model: type[BaseModel], args: Any) -> dict[str, Any]:
    """Validate wire arguments; return handler keyword arguments. Errors name the argument and the fix."""
    if not isinstance(args, dict):
        raise ArgumentError(f"{path}: arguments must be an object, got {type(args).__name__}")
    try:
        parsed = model.model_validate(args)
    except ValidationError as exc:
        problems = []
        id_problem = False
        for err in exc.errors():
            where = _location(err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f'unexpected argument "{where}"')
            elif err["type"] == "missing":
                problems.append(f'missing required argument "{where}"')
            else:
                msg = err["msg"].removeprefix("Value error, ")
                id_problem = id_problem or "must be Id(" in msg
                problems.append(f'"{where}" {msg}' if "must be Id(" in msg else f'"{where}": {msg}')
        error = IdError if id_problem else ArgumentError
        raise error(f"ArgumentValidationError: {path}: " + "; ".join(problems)) from None
    return {name: getattr(parsed, name) for name in model.model_fields}
