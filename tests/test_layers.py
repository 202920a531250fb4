"""Layers that hold: analyses → featgraph → crosscoder, checked on every import statement (module level or not)."""

import ast
import re
import sys
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


def _declared() -> set[str]:
    """Distribution names in pyproject.toml's dependencies and optional dependencies, normalised."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [d for extra in project.get("optional-dependencies", {}).values() for d in extra]
    return {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in specs}


OPTIONAL_IMPORTS = {"httpx"}
"""Imported only inside ``contextlib.suppress(ImportError)``: used when present, never required."""


def test_every_imported_package_is_declared():
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    declared = _declared()
    missing = set()
    for package in ("crosscoder", "featgraph", "analyses"):
        for path in _files(package):
            for _, name in _imports(path, package):
                top = name.split(".")[0]
                if not top or top in sys.stdlib_module_names or top in ("crosscoder", "featgraph", "analyses") or top in OPTIONAL_IMPORTS:
                    continue
                if not any(d.lower().replace("_", "-") in declared for d in dists.get(top, [top])):
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
