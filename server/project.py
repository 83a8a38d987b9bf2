"""A Ripple project: a folder holding `schema.sql` (the app's own tables) and a `functions/` package whose module
paths are the Convex module names (`functions/messages.py` → `messages:*`, `functions/admin/users.py` →
`admin/users:*`).

Loading imports every module of the package anew into a fresh `Registry`; the caller swaps it in only when the
whole load succeeded, so a module with a syntax or import error never replaces code that works.

The seed applications are such a project, shipped with Ripple (`seed_project()`): the repository root in a source
checkout, `share/ripple/` where a wheel installed it. `ripple serve` serves it when given no other.

Every project's package is named `functions`, and a process has one `sys.modules`: the project loaded first keeps
the name. Loading another one beside it (a test inspecting a second project) imports that one's modules, registers
them, then gives the name back, so the first project's code and later imports of `functions.*` stay its own.
"""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from server.admin import system_functions
from server.config import shared_path
from server.functions.registry import Registry, collect_into

__all__ = ["PACKAGE", "LoadFailed", "Project", "ProjectError", "init_project", "package_modules", "seed_project"]

PACKAGE = "functions"
TEMPLATE = Path(__file__).resolve().parent / "templates" / "project"


class ProjectError(Exception):
    """The folder is not a Ripple project; the message says what is missing and how to make one."""


class LoadFailed(Exception):
    """A module of the project could not be imported. `message` names the file and line, with the error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Project:
    """`extra_modules` (RIPPLE_MODULES: importable names, a package with all its modules) are loaded with the
    package, into the same registry, and anew on each reload."""

    root: Path
    extra_modules: tuple[str, ...] = ()

    @classmethod
    def open(cls, path: Path | str, extra_modules: Sequence[str] = ()) -> Project:
        """The project at `path`.

        Raises:
            ProjectError: `path` has no `schema.sql` or no `functions/` package.
        """
        root = Path(path).resolve()
        if not root.is_dir():
            raise ProjectError(f"{root} is not a folder; create a project with `ripple init {path}`")
        missing = [name for name in ("schema.sql", f"{PACKAGE}/__init__.py") if not (root / name).is_file()]
        if missing:
            raise ProjectError(
                f"{root} is not a Ripple project: it has no {' and no '.join(missing)}; "
                f"create one with `ripple init DIR`"
            )
        return cls(root, tuple(extra_modules))

    @property
    def schema_path(self) -> Path:
        return self.root / "schema.sql"

    @property
    def package_dir(self) -> Path:
        return self.root / PACKAGE

    def module_names(self) -> list[str]:
        """Every module of the functions package ("functions.x.y"), sorted so loads are repeatable."""
        names = []
        for file in sorted(self.package_dir.rglob("*.py")):
            parts = file.relative_to(self.root).with_suffix("").parts
            if "__pycache__" in parts or any(not p.isidentifier() for p in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
        return names

    def load(self) -> Registry:
        """Import the package (and the extra modules) anew into a new registry, leaving the modules loaded before
        in place on failure.

        Raises:
            LoadFailed: a module failed to import (syntax error, import error, an exception at import, two
                functions with one name); the message names the file and the error.
        """
        root = str(self.root)
        added = root not in sys.path
        if added:
            sys.path.insert(0, root)
        holder = _package_root()
        borrowed = holder is not None and holder != self.root  # another project holds the name: give it back
        names = (PACKAGE, *self.extra_modules)
        old = _take_modules(names)
        importlib.invalidate_caches()
        fresh = Registry()
        for spec in system_functions():  # the admin console's; imported outside collect_into, once
            fresh.add(spec)
        try:
            with collect_into(fresh):
                for name in self.module_names():
                    importlib.import_module(name)
                for name in self.extra_modules:
                    package_modules(name)
        except Exception as error:
            _take_modules(names)
            sys.modules.update(old)
            raise LoadFailed(_describe(error, self.root)) from error
        finally:
            if borrowed:
                _take_modules(names)
                sys.modules.update(old)
                if added:
                    sys.path.remove(root)
        return fresh


def _package_root() -> Path | None:
    """The root of the project whose `functions` package this process has imported, if any."""
    module = sys.modules.get(PACKAGE)
    file = getattr(module, "__file__", None)
    return Path(file).resolve().parent.parent if file else None


def _take_modules(names: Sequence[str]) -> dict[str, ModuleType]:
    """Remove `names` and their submodules from `sys.modules`; returns what was removed."""
    taken = {n: m for n, m in sys.modules.items() if any(n == p or n.startswith(p + ".") for p in names)}
    for name in taken:
        del sys.modules[name]
    return taken


def package_modules(name: str) -> list[ModuleType]:
    """Import `name` and, when it is a package, every module below it (sorted, so loads are repeatable): the
    functions of a package register without its `__init__` importing them, as a project's do."""
    module = importlib.import_module(name)
    found = [module]
    for info in sorted(pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{name}."), key=lambda i: i.name):
        found.append(importlib.import_module(info.name))
    return found


def seed_project(extra_modules: Sequence[str] = ()) -> Project:
    """The seed applications' project, shipped with Ripple: in a source checkout the repository root, where a
    wheel is installed its data files (`share/ripple/schema.sql`, `share/ripple/functions/`).

    Raises:
        ProjectError: neither holds the seed project (an install without its data files).
    """
    try:
        return Project.open(shared_path(PACKAGE).parent, extra_modules)
    except ProjectError as error:
        raise ProjectError(
            f"the seed project is not installed ({error}); give a project folder: `ripple serve PATH` or "
            "RIPPLE_PROJECT=PATH"
        ) from None


def _describe(error: Exception, root: Path) -> str:
    """The error as a developer wants to read it: the project file and line it happened at, then the error."""
    if isinstance(error, SyntaxError):
        where = f"{error.filename}:{error.lineno}" if error.filename else "?"
        return f"{where}: {type(error).__name__}: {error.msg}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(str(root))]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    return f"{where}{type(error).__name__}: {error}"


def init_project(dest: Path) -> list[Path]:
    """Write a working project (schema, one query and one mutation, their test, pytest.ini, README) into `dest`,
    which may exist but must be empty: an init never overwrites anyone's files. Returns the files written.

    Raises:
        ProjectError: `dest` is a file or a folder with something in it.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ProjectError(f"{dest} already exists and is not an empty folder; give a new folder's name")
    written = []
    for source in sorted(TEMPLATE.rglob("*")):
        if source.is_dir() or "__pycache__" in source.parts:
            continue
        relative = source.relative_to(TEMPLATE)
        if relative.name == "gitignore":  # shipped without its dot, so packaging tools keep it
            relative = relative.with_name(".gitignore")
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    return written
