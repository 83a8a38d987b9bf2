"""The function registry: decorators that app modules use, wire names, and who may call what.

`apps/generations.py: list_by_parent` registers as `generations:listByParent`; `name=` overrides the export
name. Internal functions are found only by `ctx.run_*` from other functions, never by a client.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, overload

from pydantic import BaseModel

from server.errors import FunctionNotFound, excerpt
from server.functions.validation import args_model
from server.values import to_camel

__all__ = [
    "FunctionKind",
    "FunctionSpec",
    "Registry",
    "Visibility",
    "action",
    "canonical_path",
    "internal_action",
    "internal_mutation",
    "internal_query",
    "mutation",
    "query",
    "registry",
]


class FunctionKind(enum.Enum):
    QUERY = "query"
    MUTATION = "mutation"
    ACTION = "action"


class Visibility(enum.Enum):
    PUBLIC = "public"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A registered function; what a decorator returns, so other functions can pass it to `ctx.run_*`."""

    path: str
    kind: FunctionKind
    visibility: Visibility
    handler: Callable[..., Any]
    args: type[BaseModel] = field(repr=False)

    async def __call__(self, ctx: Any, **kwargs: Any) -> Any:
        """Call the handler directly, as a helper would (no validation, same context)."""
        return await self.handler(ctx, **kwargs)


def canonical_path(path: str) -> str:
    """Convex's rules: split at the last ':', a missing export is `default`, a `.js` module suffix is dropped."""
    module, sep, name = path.rpartition(":")
    if not sep:
        module, name = path, "default"
    if module.endswith(".js"):
        module = module[:-3]
    return f"{module}:{name}"


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, FunctionSpec] = {}

    def add(self, spec: FunctionSpec) -> None:
        existing = self._specs.get(spec.path)
        if existing is not None and existing.handler.__qualname__ != spec.handler.__qualname__:
            raise ValueError(f"two functions register as {spec.path!r}; give one of them name=...")
        self._specs[spec.path] = spec

    def resolve(self, path: str, *, internal_ok: bool) -> FunctionSpec:
        spec = self._specs.get(canonical_path(path)) if isinstance(path, str) else None
        if spec is None or (spec.visibility is Visibility.INTERNAL and not internal_ok):
            raise FunctionNotFound(f"Could not find public function for {excerpt(path)}.")
        return spec

    def __iter__(self) -> Any:
        return iter(self._specs.values())


registry = Registry()


def _module_name(fn: Callable[..., Any]) -> str:
    return to_camel(fn.__module__.rpartition(".")[2])


Handler = Callable[..., Awaitable[Any]]


class _Decorator:
    """`@query` or `@query(name="module:fn")`: registers the handler and returns its `FunctionSpec`."""

    def __init__(self, kind: FunctionKind, visibility: Visibility) -> None:
        self.kind = kind
        self.visibility = visibility

    @overload
    def __call__(self, fn: Handler, /) -> FunctionSpec: ...
    @overload
    def __call__(self, /, *, name: str | None = None) -> Callable[[Handler], FunctionSpec]: ...

    def __call__(
        self, fn: Handler | None = None, /, *, name: str | None = None
    ) -> FunctionSpec | Callable[[Handler], FunctionSpec]:
        def register(handler: Handler) -> FunctionSpec:
            if not inspect.iscoroutinefunction(handler):
                raise TypeError(f"{handler.__qualname__} must be an async function (async def ...)")
            export = name or to_camel(handler.__name__)
            path = export if ":" in export else f"{_module_name(handler)}:{export}"
            spec = FunctionSpec(canonical_path(path), self.kind, self.visibility, handler, args_model(handler))
            registry.add(spec)
            return spec

        return register(fn) if fn is not None else register


query = _Decorator(FunctionKind.QUERY, Visibility.PUBLIC)
mutation = _Decorator(FunctionKind.MUTATION, Visibility.PUBLIC)
action = _Decorator(FunctionKind.ACTION, Visibility.PUBLIC)
internal_query = _Decorator(FunctionKind.QUERY, Visibility.INTERNAL)
internal_mutation = _Decorator(FunctionKind.MUTATION, Visibility.INTERNAL)
internal_action = _Decorator(FunctionKind.ACTION, Visibility.INTERNAL)
