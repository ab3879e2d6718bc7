"""The dependency rules of docs/design.md §3 and docs/contracts.md, checked on the source: judges
never import the engine or a runner, and parsed flags (argparse) stop at the entry points."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LABELER = Path(__file__).resolve().parents[1] / "labeler"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted((LABELER / "judges").rglob("*.py")), ids=lambda p: p.name)
def test_judges_import_neither_the_engine_nor_a_runner(path: Path) -> None:
    bad = {m for m in _imports(path) if m.startswith(("labeler.engine", "labeler.runners", "labeler.ledger"))}
    assert not bad, f"{path.relative_to(LABELER)} imports {sorted(bad)}"


def _past_the_cli() -> list[Path]:
    """The engine, the runners and the service, but for the service's own command line (cli.py)."""
    files = [
        LABELER / "engine.py",
        LABELER / "engine_types.py",
        LABELER / "engine_spec.py",
        LABELER / "ledger.py",
    ]
    files += sorted((LABELER / "runners").rglob("*.py"))
    files += [p for p in sorted((LABELER / "service").rglob("*.py")) if p.name != "cli.py"]
    return files


@pytest.mark.parametrize("path", _past_the_cli(), ids=lambda p: str(p.relative_to(LABELER)))
def test_no_parsed_flags_reach_the_engine_the_runners_or_the_service(path: Path) -> None:
    assert "argparse" not in _imports(path), f"{path.relative_to(LABELER)} imports argparse"
