"""`ripple codegen --python`: the typed Python client matches the signatures, is committed up to date for the
examples, makes mypy accept right calls and refuse wrong ones, and calls the server through the official client."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import pytest
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from server import Doc, Id, Page
from server.codegen import CodegenError
from server.codegen_python import render_python
from server.database.catalog import Catalog, Column, ColumnType, Table
from server.functions.registry import FunctionKind, FunctionSpec, Visibility
from server.functions.validation import args_model
from tests.support.server import ADMIN_KEY, RippleServer
from tests.test_codegen import run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "client_examples" / "python"
GENERATED = EXAMPLES / "ripple_api.py"


def spec(handler: Any, path: str, kind: FunctionKind = FunctionKind.QUERY) -> FunctionSpec:
    return FunctionSpec(path, kind, Visibility.PUBLIC, handler, args_model(handler))


class Shot(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel)  # the wire keys are the aliases, as the server reads them

    shot_number: int
    kind: Literal["wide", "close"] = "wide"


async def plan(ctx: Any, shots: list[Shot], title: str, limit: int | None = None) -> dict[str, float]:
    return {}


async def listing(ctx: Any, class_: str) -> list[str]:
    return []


async def untranslatable(ctx: Any, when: complex) -> None:
    return None


def test_signatures_results_and_omitted_arguments() -> None:
    text = render_python([spec(plan, "board/plans:plan", FunctionKind.MUTATION)], Catalog())
    assert 'class Shot(TypedDict):\n    shotNumber: float\n    kind: NotRequired[Literal["wide", "close"]]' in text
    assert (
        "    def plan(self, *, shots: list[Shot], title: str, limit: float | None | _Omitted = OMITTED) -> "
        "dict[str, float]:\n"
        '        """Mutation `board/plans:plan`."""\n'
        '        return self._client.mutation("board/plans:plan", _args(shots=shots, title=title, limit=limit))'
    ) in text
    assert "def watch_plan" not in text  # only queries are followed live
    # Folders nest as attributes: api.board.plans.plan(...).
    assert "class _BoardModule(_Module):" in text and "self.plans = _BoardPlansModule(client)" in text
    assert "self.board = _BoardModule(client)" in text


def test_a_method_that_shadows_a_builtin_keeps_the_types_right() -> None:
    text = render_python([spec(listing, "things:list")], Catalog())
    # Inside the class, `list` names the method: the result type says `builtins.list`, the rest stays plain.
    assert "    def list(self, *, class_: str) -> builtins.list[str]:" in text
    assert "    def watch_list(self, *, class_: str) -> Iterator[builtins.list[str]]:" in text
    assert 'return self._client.query("things:list", _args(class_=class_))' in text


def test_untranslatable_types_name_the_function() -> None:
    with pytest.raises(CodegenError, match="things:when: no Python client type for complex"):
        render_python([spec(untranslatable, "things:when")], Catalog())


VIDEOS = Catalog(tables={"videos": Table("videos", 1, {"title": Column("title", ColumnType.TEXT, True, False)}, {})})


class Chapter(TypedDict):
    videoId: Id("videos")  # type: ignore[valid-type]
    title: str
    note: NotRequired[str | None]


class Outline(TypedDict):
    chapters: list[Chapter]
    first: Chapter | None


async def paged(ctx: Any, pagination_opts: dict[str, Any]) -> Page(Doc("videos")):  # type: ignore[valid-type]
    return {}


async def untyped_page(ctx: Any, pagination_opts: dict[str, Any]) -> dict[str, Any]:
    return {}


async def created(ctx: Any) -> Id("videos"):  # type: ignore[valid-type]
    return ""


async def outline(ctx: Any) -> Outline:
    return {"chapters": [], "first": None}


def test_pages_ids_and_typed_dict_results() -> None:
    specs = [
        spec(paged, "videos:paged"),
        spec(untyped_page, "videos:untypedPage"),
        spec(created, "videos:created", FunctionKind.MUTATION),
        spec(outline, "videos:outline"),
    ]
    text = render_python(specs, VIDEOS)
    assert "def paged(self, *, pagination_opts: PaginationOpts) -> PaginationResult[Videos]:" in text
    assert "def untyped_page(self, *, pagination_opts: PaginationOpts) -> PaginationResult[dict[str, Any]]:" in text
    assert "def created(self) -> VideosId:" in text
    assert "def outline(self) -> Outline:" in text
    # A TypedDict is declared once, by name, nested ones too; NotRequired stays so (this module's annotations are
    # strings, which the class's own __optional_keys__ cannot see through).
    assert "class Outline(TypedDict):\n    chapters: list[Chapter]\n    first: Chapter | None\n" in text
    assert (
        "class Chapter(TypedDict):\n    videoId: VideosId\n    title: str\n    note: NotRequired[str | None]\n" in text
    )
    assert text.count("class Chapter(TypedDict)") == 1


# Another module's type of the same name, and one named as a type of the generated module's header.
OtherOutline = TypedDict("Outline", {"chapters": int})  # type: ignore[misc]  # noqa: UP013 (its name differs)
NamedAsHeader = TypedDict("PaginationResult", {"x": int})  # type: ignore[misc]  # noqa: UP013


async def clash(ctx: Any) -> OtherOutline:
    return {"chapters": 0}


async def reserved(ctx: Any) -> NamedAsHeader:
    return {"x": 0}


def test_two_types_of_one_name_are_an_error() -> None:
    """The client declares each type once by name: a second one of that name would silently be typed as the first."""
    with pytest.raises(CodegenError, match="videos:outline: two types are named Outline"):
        render_python([spec(outline, "videos:outline"), spec(clash, "videos:clash")], VIDEOS)
    with pytest.raises(CodegenError, match="videos:reserved: the type PaginationResult has the name of a type"):
        render_python([spec(reserved, "videos:reserved")], VIDEOS)


async def test_the_committed_client_is_up_to_date(fresh_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "ripple_api.py"
    env = {"DATABASE_URL": fresh_dsn, "RIPPLE_MODULES": "[]"}
    code, output = await run(
        sys.executable,
        "-m",
        "server.cli",
        "codegen",
        "--out",
        str(tmp_path / "ts"),
        "--python",
        str(out),
        cwd=ROOT,
        env=env,
    )
    assert code == 0, output
    assert out.read_text() == GENERATED.read_text(), (
        "client_examples/python/ripple_api.py is stale: run "
        "`ripple codegen --out client_examples/node/convex/_generated --python client_examples/python/ripple_api.py`"
    )


WRONG = """
from convex import ConvexClient
from ripple_api import Api, SceneShotsId, ShotImagesId, VideosId

api = Api(ConvexClient("http://127.0.0.1:1"))
api.videos.get_job_by_id(job=1)
api.videos.list_by_status(limit="ten")
api.videos.update_job_error(twitch_id="t", job_id="j", error_type="x", error_message="m")
api.workflows.get_workflow(workflow_id="plain string")
api.workflows.get_workflow(workflow_id=VideosId("an id of another table"))
# Only the result types (Page, Id, TypedDict results) refuse these: each was dict[str, Any] or str before them.
page = api.workflows.list_by_status(status="pending", pagination_opts={"numItems": 2, "cursor": None})
tasks: list[str] = [w["task"] for w in page["page"]]
page["page"][0]["nosuch"]
video: VideosId = api.workflows.create_workflow(task="t")
started = api.image_generation.generate_shot_images(shot_id=SceneShotsId("a shot"))
images: list[ShotImagesId] = started["imageIds"]
started["nosuch"]
"""


async def test_mypy_accepts_the_example_and_refuses_wrong_calls(tmp_path: Path) -> None:
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache")]
    code, output = await run(*mypy, str(EXAMPLES / "job_monitor.py"), cwd=EXAMPLES)
    assert code == 0, output
    (tmp_path / "wrong.py").write_text(WRONG)
    code, output = await run(*mypy, str(tmp_path / "wrong.py"), cwd=EXAMPLES, env={"MYPYPATH": str(EXAMPLES)})
    assert code == 1, output
    for expected in (
        'wrong.py:6: error: Unexpected keyword argument "job" for "get_job_by_id"',
        'wrong.py:7: error: Argument "limit" to "list_by_status" of "_VideosModule" has incompatible type "str"',
        'wrong.py:8: error: Missing named argument "is_retryable" for "update_job_error"',
        'wrong.py:9: error: Argument "workflow_id" to "get_workflow" of "_WorkflowsModule" has incompatible type "str"',
        'wrong.py:10: error: Argument "workflow_id" to "get_workflow" of "_WorkflowsModule" has incompatible type '
        '"VideosId"',
        'wrong.py:14: error: TypedDict "Workflows" has no key "nosuch"',
        'wrong.py:15: error: Incompatible types in assignment (expression has type "WorkflowsId", variable has type '
        '"VideosId")',
        'wrong.py:18: error: TypedDict "IterationStarted" has no key "nosuch"',
    ):
        assert expected in output, output
    # And nothing else: a page's documents, a TypedDict result's keys and returned ids read as typed.
    assert {int(line) for line in re.findall(r"wrong\.py:(\d+): error", output)} == {6, 7, 8, 9, 10, 14, 15, 18}, output


CALLS = """
import json, sys
from convex import ConvexClient
from ripple_api import Api

client = ConvexClient(sys.argv[1])
client.set_admin_auth(sys.argv[2])
api = Api(client)
created = api.videos.create(twitch_id="typed", title="Typed call")
# `limit` left out is absent on the wire (the default, 50, applies); `status` as given.
listed = api.videos.list_by_status(status="Queued")
first = next(api.videos.watch_get_job_by_id(job_id="nope"))
print(json.dumps({"created": created, "listed": [v["twitchId"] for v in listed], "first": first}))
"""


async def test_calls_reach_the_server_through_the_official_client(ripple: RippleServer, tmp_path: Path) -> None:
    """In a child process, as the official client's Rust core is used everywhere else in the suite."""
    (tmp_path / "calls.py").write_text(CALLS)
    code, output = await run(
        sys.executable,
        str(tmp_path / "calls.py"),
        ripple.url,
        ADMIN_KEY,
        cwd=EXAMPLES,
        env={"PYTHONPATH": str(EXAMPLES)},
    )
    assert code == 0, output
    result = json.loads(output.strip().splitlines()[-1])
    assert isinstance(result["created"], str) and result["listed"] == ["typed"] and result["first"] is None
