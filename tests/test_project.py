"""Project folders: `ripple init` writes one whose own test passes; `ripple dev` reloads it in place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import main
from server.functions.registry import module_name
from server.project import Project, ProjectError

ROOT = Path(__file__).resolve().parent.parent


def test_module_names_are_paths_below_the_functions_package() -> None:
    assert module_name("functions.messages") == "messages"
    assert module_name("functions.admin.user_roles") == "admin/userRoles"
    assert module_name("server.apps.generate_animation") == "generateAnimation"
    assert module_name("some_app.notes") == "notes"


def test_init_refuses_a_folder_with_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["init", str(tmp_path)]) == 1
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_open_says_what_a_project_lacks(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="no schema.sql and no functions/__init__.py"):
        Project.open(tmp_path)


def test_init_writes_a_project_whose_own_test_passes(tmp_path: Path, pg_server: str) -> None:
    project = tmp_path / "chat"
    assert main(["init", str(project)]) == 0
    specs = Project.open(project).load()
    assert sorted(s.path for s in specs) == ["messages:list", "messages:send"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL", "PYTEST_"))}
    env.update(PYTHONPATH=str(ROOT), RIPPLE_TEST_DATABASE_URL=pg_server)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout + done.stderr
