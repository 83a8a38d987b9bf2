"""`ripple codegen`: the generated TypeScript matches the Python signatures, stays committed up to date for the
React example, and makes `tsc` accept the example and refuse wrong calls."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Generic, Literal, NotRequired, Required, TypedDict, TypeVar

import pytest
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from server import Doc, Id, Page
from server.codegen import CodegenError, api_dts, function_type
from server.database.catalog import Catalog
from server.functions.registry import FunctionKind, FunctionSpec, Visibility
from server.functions.validation import args_model
from tests.clients.driver import npm_ci

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "client_examples" / "node"
GENERATED = EXAMPLE / "convex" / "_generated"
TABLES = ["generations", "videos", "_storage"]


def spec(handler: Any, path: str = "mod:fn", visibility: Visibility = Visibility.PUBLIC) -> FunctionSpec:
    return FunctionSpec(path, FunctionKind.QUERY, visibility, handler, args_model(handler))


class Shot(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel)

    shot_number: int
    kind: Literal["wide", "close"] = "wide"
    note: str | None = None


async def typed(
    ctx: Any,
    parent_id: Id("generations"),  # type: ignore[valid-type]
    shots: list[Shot],
    tags: dict[str, float],
    flag: bool,
    anything: Any,
    untyped,  # type: ignore[no-untyped-def]
    limit: int | None = None,
) -> list[Doc("generations")]:  # type: ignore[valid-type]
    return []


def test_python_types_map_to_typescript() -> None:
    text = function_type(spec(typed), TABLES)
    assert text == (
        'FunctionReference<"query", "public", { parentId: Id<"generations">; '
        'shots: Array<{ shotNumber: number; kind?: "wide" | "close"; note?: string | null }>; '
        "tags: Record<string, number>; flag: boolean; anything: any; untyped: any; limit?: number | null }, "
        'Array<Doc<"generations">>>'
    )


async def paged(ctx: Any, status: str, pagination_opts: dict[str, Any]) -> dict[str, Any]:
    return {}


async def no_args(ctx: Any) -> None:
    return None


def test_pagination_and_empty_arguments() -> None:
    assert function_type(spec(paged), TABLES) == (
        'FunctionReference<"query", "public", { status: string; paginationOpts: PaginationOptions }, '
        "PaginationResult<Record<string, any>>>"
    )
    assert function_type(spec(no_args, visibility=Visibility.INTERNAL), TABLES) == (
        'FunctionReference<"query", "internal", {}, null>'
    )


async def typed_page(ctx: Any, pagination_opts: dict[str, Any]) -> Page(Doc("videos")):  # type: ignore[valid-type]
    return {}


async def new_id(ctx: Any) -> list[Id("videos")]:  # type: ignore[valid-type]
    return []


async def stored_files(ctx: Any) -> list[Doc("_storage") | None]:  # type: ignore[valid-type]
    return []


def test_pages_ids_and_system_documents_as_results() -> None:
    """`Page(...)` is what `usePaginatedQuery` takes, with the page's type; an `Id` result is told apart by table;
    a system table's document is Convex's own type (the DataModel has no system tables)."""
    assert function_type(spec(typed_page), TABLES).endswith(
        '{ paginationOpts: PaginationOptions }, PaginationResult<Doc<"videos">>>'
    )
    assert function_type(spec(new_id), TABLES).endswith('{}, Array<Id<"videos">>>')
    assert function_type(spec(stored_files), TABLES).endswith(
        '{}, Array<DocumentByName<SystemDataModel, "_storage"> | null>>'
    )


class Selected(TypedDict):
    _id: Id("videos")  # type: ignore[valid-type]
    note: NotRequired[str | None]


class Row(TypedDict, total=False):
    title: str
    selected: Required[Selected | None]
    page: Page(Doc("videos"))  # type: ignore[valid-type]


class Tree(TypedDict):
    children: list[Tree]


async def rows(ctx: Any) -> list[Row]:
    return []


async def tree(ctx: Any) -> Tree:
    return {"children": []}


def test_typed_dict_results_are_their_keys() -> None:
    """Keys as written (a TypedDict is the dict the handler returns), `?` where one may be absent: NotRequired,
    or a class with total=False unless Required; read right under `from __future__ import annotations`, as this
    module is, where the class's own `__optional_keys__` misses NotRequired."""
    assert function_type(spec(rows), TABLES).endswith(
        '{}, Array<{ title?: string; selected: { _id: Id<"videos">; note?: string | null } | null; '
        'page?: PaginationResult<Doc<"videos">> }>>'
    )
    with pytest.raises(CodegenError, match="mod:fn: Tree contains itself; a recursive type has no inline form"):
        function_type(spec(tree), TABLES)


def test_module_paths_nest_and_internal_functions_stay_out_of_api() -> None:
    text = api_dts([spec(no_args, "projectRedesign:getStoryboard"), spec(no_args, "admin/jobs:retry")], Catalog())
    assert '  projectRedesign: {\n    getStoryboard: FunctionReference<"query", "public", {}, null>;' in text
    assert '  admin: {\n    jobs: {\n      retry: FunctionReference<"query", "public", {}, null>;' in text
    text = api_dts([spec(no_args, "jobs:retry", Visibility.INTERNAL)], Catalog())
    assert "export declare const api: {\n};" in text
    assert "export declare const internal: {\n  jobs: {\n    retry:" in text
    with pytest.raises(CodegenError, match="a:b: its name collides with a module of the same name"):
        api_dts([spec(no_args, "a:b"), spec(no_args, "a/b:c")], Catalog())


async def unknown_table(ctx: Any, x: Id("nosuch")) -> None:  # type: ignore[valid-type]
    return None


async def untranslatable(ctx: Any, when: complex) -> None:
    return None


T = TypeVar("T")


class Boxed(TypedDict, Generic[T]):
    value: T


async def boxed(ctx: Any) -> Boxed[int]:
    return {"value": 1}


def test_untranslatable_types_are_errors_naming_the_function() -> None:
    with pytest.raises(CodegenError, match=r'mod:fn: Id\("nosuch"\) names no table of schema.sql; the tables are'):
        function_type(spec(unknown_table), TABLES)
    with pytest.raises(CodegenError, match="mod:fn: no TypeScript type for complex"):
        function_type(spec(untranslatable), TABLES)
    with pytest.raises(CodegenError, match="mod:fn: Boxed is a generic TypedDict; clients get no type for it"):
        function_type(spec(boxed), TABLES)


async def run(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


async def tsc(project: Path, *options: str) -> tuple[int, str]:
    """`tsc --noEmit` on a project; its output without colours (`--pretty` also names the property at fault)."""
    if not (EXAMPLE / "node_modules" / "typescript").is_dir():
        await npm_ci(EXAMPLE)
    npx = shutil.which("npx")
    assert npx is not None, "npx is not on PATH: install Node.js"
    code, output = await run(npx, "--no-install", "tsc", "--noEmit", "-p", str(project), *options, cwd=EXAMPLE)
    return code, re.sub(r"\x1b\[[0-9;]*m", "", output)


async def test_generated_files_are_up_to_date(fresh_dsn: str, tmp_path: Path) -> None:
    """The committed `_generated/` is what `ripple codegen` writes now (run it after changing a signature)."""
    env = {"DATABASE_URL": fresh_dsn, "RIPPLE_MODULES": "[]"}
    code, output = await run(sys.executable, "-m", "server.cli", "codegen", "--out", str(tmp_path), cwd=ROOT, env=env)
    assert code == 0, output
    assert "api.d.ts, api.js, dataModel.d.ts" in output
    for name in ("api.d.ts", "api.js", "dataModel.d.ts"):
        assert (tmp_path / name).read_text() == (GENERATED / name).read_text(), (
            f"{name} is stale: run `ripple codegen --out client_examples/node/convex/_generated`"
        )
    code, output = await run(sys.executable, "-m", "server.cli", "codegen", "--out", str(tmp_path), cwd=ROOT, env=env)
    assert code == 0 and "nothing changed" in output, output


BAD_MODULE = """
from server import query


@query
async def when(ctx, at: complex) -> None:
    return None
"""


async def test_cli_names_the_function_it_cannot_translate(fresh_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "bad_codegen_module.py").write_text(BAD_MODULE)
    env = {
        "DATABASE_URL": fresh_dsn,
        "RIPPLE_MODULES": '["bad_codegen_module"]',
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    out = tmp_path / "out"
    code, output = await run(sys.executable, "-m", "server.cli", "codegen", "--out", str(out), cwd=ROOT, env=env)
    assert code == 1, output
    assert "ripple codegen: badCodegenModule:when: no TypeScript type for complex" in output, output
    assert "Traceback" not in output and not out.exists(), output


async def test_tsc_accepts_the_example() -> None:
    code, output = await tsc(EXAMPLE)
    assert code == 0, output


WRONG = """\
import { ConvexHttpClient } from "convex/browser";
import { usePaginatedQuery } from "convex/react";
import { api, internal } from "../convex/_generated/api";
import type { Id } from "../convex/_generated/dataModel";

const client = new ConvexHttpClient("http://127.0.0.1:1");
const parentId = "0" as Id<"generations">;

export async function calls(): Promise<void> {
  const refinements = await client.query(api.generations.listByParent, { parentId });
  const prompts: Array<string> = refinements.map((g) => g.prompt);
  const paginationOpts = { numItems: 2, cursor: null };
  const page = await client.query(api.workflows.listByStatus, { status: "pending", paginationOpts });
  const done: boolean = page.isDone;
  await client.mutation(api.workflows.createWorkflow, { task: "t" });
  void [prompts, done, internal.generations.createPending];
  await client.query(api.generations.listByParent, { parentId: 42 });  // WRONG: number for an id
  await client.query(api.generations.listByParent, { parentId: "plain string" });  // WRONG: not an Id
  await client.query(api.videos.listByStatus, { limit: "ten" });  // WRONG: string for a number
  await client.mutation(api.workflows.createWorkflow, {});  // WRONG: missing task
  await client.mutation(api.generations.createPending, {});  // WRONG: internal, not in api
  const n: number = await client.mutation(api.workflows.createWorkflow, { task: "t" });  // WRONG: returns string
  void n;
  // Only the result types (Page, Id, TypedDict results) refuse these: each was `any` or `string` before them.
  const task = "t";
  const tasks: Array<string> = page.page.map((w) => w.task);
  void [tasks, page.page[0].nosuch];  // WRONG: a workflow has no field nosuch
  const videoId: Id<"videos"> = await client.mutation(api.workflows.createWorkflow, { task });  // WRONG: of workflows
  const started = await client.mutation(api.imageGeneration.generateShotImages, { shotId: "0" as Id<"sceneShots"> });
  const imageIds: Array<Id<"shotImages">> = started.imageIds;
  void [videoId, imageIds, started.nosuch];  // WRONG: a TypedDict result has only its keys
}

export function usePages(): Array<string> {
  const { results } = usePaginatedQuery(api.workflows.listByStatus, { status: "pending" }, { initialNumItems: 2 });
  void results.map((w) => w.nosuch);  // WRONG: usePaginatedQuery's results are the page's documents
  return results.map((w) => w.currentStep);
}
"""


async def test_tsc_refuses_wrong_arguments() -> None:
    """Every line marked WRONG fails type checking, and nothing else does."""
    with tempfile.TemporaryDirectory(prefix=".tsc-check-", dir=EXAMPLE) as folder:
        check = Path(folder)
        (check / "calls.ts").write_text(WRONG)
        (check / "tsconfig.json").write_text(
            '{"extends": "../tsconfig.json", "include": ["calls.ts", "../convex/_generated/*.d.ts"]}'
        )
        code, output = await tsc(check, "--pretty")
    assert code != 0, output
    wrong = {i for i, line in enumerate(WRONG.splitlines(), 1) if "// WRONG" in line}
    failed = {int(m) for m in re.findall(r"calls\.ts:(\d+):\d+ - error", output)}
    assert failed == wrong, output
    assert "Type 'number' is not assignable to type 'Id<\"generations\">'" in output, output
    assert "The expected type comes from property 'parentId'" in output, output
    assert "createPending" in output, output
    assert "Property 'nosuch' does not exist on type '{ _id: Id<\"workflows\">;" in output, output
    assert "Type 'Id<\"workflows\">' is not assignable to type 'Id<\"videos\">'" in output, output
