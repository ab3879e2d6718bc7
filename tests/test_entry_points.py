"""The documented entry points: `python -m` modules and the console commands in pyproject.toml."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
    "scripts"
]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_command_targets_resolve(name: str) -> None:
    module, _, attr = SCRIPTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


@pytest.mark.parametrize(
    ("module", "words"),
    [
        ("labeler.batch", "--out"),
        ("labeler.app", "--judge"),
        ("labeler.agreement", "--pred"),
        ("labeler.standin", "--port"),
    ],
)
def test_python_m_entry_points_answer_help(module: str, words: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert words in proc.stdout


def test_installed_console_command_runs() -> None:
    exe = shutil.which("densepref-batch", path=str(Path(sys.executable).parent))
    assert exe is not None, "densepref-batch is not installed beside this Python (pip install -e .)"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--out" in proc.stdout, proc.stderr


def test_uvicorn_factory_is_importable() -> None:
    from labeler.app import create_app

    assert callable(create_app)


def test_the_wheel_ships_every_package_and_data_file(tmp_path: Path) -> None:
    # A non-editable install must not lose a subpackage, the annotation page or the prompts.
    import zipfile

    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names = set(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist())
    roots = ("labeler", "trainer", "prompts")
    packages = {
        p.parent.relative_to(REPO).as_posix() for r in roots for p in (REPO / r).glob("**/__init__.py")
    }
    missing = {p for p in packages if f"{p}/__init__.py" not in names}
    assert not missing, missing
    for data in ("labeler/service/annotate/static/annotate.html", "prompts/conservative.j2"):
        assert data in names
