"""Layers that hold: analyses → featgraph → crosscoder, checked on every import statement (module level or not)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "crosscoder": {"featgraph", "analyses"},
    "featgraph": {"analyses"},
}


def _imports(path: Path, package: str, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative imports resolved against ``package``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = [package] + list(path.relative_to(root / package).with_suffix("").parts)[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    bad = []
    for path in _files(package):
        for line, name in _imports(path, package):
            if name.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "imports against the layers analyses → featgraph → crosscoder:\n" + "\n".join(bad)


def test_crosscoder_and_io_do_not_import_each_other():
    def names(module):
        return {n for _, n in _imports(ROOT / "crosscoder" / f"{module}.py", "crosscoder")}

    assert not ("crosscoder.io" in names("crosscoder") and "crosscoder.crosscoder" in names("io"))
    assert "crosscoder.io" not in names("crosscoder")  # io builds on the crosscoder, never the other way


def test_the_walker_sees_a_violation(tmp_path):
    """The check itself can fail: function-level and relative imports of a forbidden package are caught."""
    pkg = tmp_path / "featgraph" / "sub"
    pkg.mkdir(parents=True)
    bad = pkg / "bad.py"
    bad.write_text("def f():\n    from analyses.providers import embedded_model\n    import analyses\n    from ..pipeline import x\n")
    found = [n for _, n in _imports(bad, "featgraph", tmp_path)]
    assert found == ["analyses.providers", "analyses", "featgraph.pipeline"]
