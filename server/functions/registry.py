"""The function registry: decorators that app modules use, wire names, and who may call what.

`functions/generations.py: list_by_parent` registers as `generations:listByParent`; `name=` overrides the export
name. Modules under a project's `functions` package are named by their path below it, as Convex names files
under `convex/`: `functions/admin/users.py` is `admin/users`. Internal functions are
found only by `ctx.run_*` from other functions, never by a client.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
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
    "collect_into",
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

    def get(self, path: str) -> FunctionSpec | None:
        """The function registered at exactly `path` (any visibility), or None."""
        return self._specs.get(path)

    def __iter__(self) -> Any:
        return iter(self._specs.values())


registry = Registry()
# Where decorators register: the process's `registry`, or a fresh one while `collect_into` loads code anew.
_targets: list[Registry] = [registry]
# Packages whose modules are named by their path below them (Convex: the file's path under `convex/`).
MODULE_ROOTS = ("functions",)


@contextmanager
def collect_into(target: Registry) -> Iterator[Registry]:
    """Register into `target` while inside: a reload imports a project's modules into a new registry, so the
    old one keeps serving until the new one is complete (or forever, if the new code fails to import)."""
    _targets.append(target)
    try:
        yield target
    finally:
        _targets.remove(target)


def module_name(module: str) -> str:
    """The Convex module name of a Python module: its path below a root package, each part camelCased
    (`functions.admin.user_roles` → `admin/userRoles`); elsewhere, its last part."""
    for root in MODULE_ROOTS:
        if module.startswith(root + "."):
            return "/".join(to_camel(part) for part in module[len(root) + 1 :].split("."))
    return to_camel(module.rpartition(".")[2])


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
            path = export if ":" in export else f"{module_name(handler.__module__)}:{export}"
            spec = FunctionSpec(canonical_path(path), self.kind, self.visibility, handler, args_model(handler))
            _targets[-1].add(spec)
            return spec

        return register(fn) if fn is not None else register


query = _Decorator(FunctionKind.QUERY, Visibility.PUBLIC)
mutation = _Decorator(FunctionKind.MUTATION, Visibility.PUBLIC)
action = _Decorator(FunctionKind.ACTION, Visibility.PUBLIC)
internal_query = _Decorator(FunctionKind.QUERY, Visibility.INTERNAL)
internal_mutation = _Decorator(FunctionKind.MUTATION, Visibility.INTERNAL)
internal_action = _Decorator(FunctionKind.ACTION, Visibility.INTERNAL)
