"""The import graph points one way: the command line and the benchmarks sit on top; the layer,
the harness and the testing kit never import them; the timing and atomic-write modules are leaves."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ecgkern"
TOP = ("ecgkern.bench", "ecgkern.cli", "ecgkern.__main__")
LEAVES = ("ecgkern.timing", "ecgkern.atomic")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (lazy imports inside functions too)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _is_within(name: str, roots) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if not _is_within(_module_name(p), TOP))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: _module_name(p))
def test_nothing_below_imports_the_command_line_or_the_benchmarks(path):
    upward = sorted(name for name in _imports(path) if _is_within(name, TOP))
    assert not upward, f"{_module_name(path)} imports {', '.join(upward)}"


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_no_other_ecgkern_module(leaf):
    path = PACKAGE / (leaf.split(".")[1] + ".py")
    inner = sorted(name for name in _imports(path) if name.startswith("ecgkern"))
    assert not inner, f"{leaf} imports {', '.join(inner)}"


def test_the_harness_and_the_testing_kit_load_without_the_benchmarks():
    code = ("import sys, ecgkern.testing, ecgkern.ecg.cli, ecgkern.ecg.train, ecgkern.ecg.sweep; "
            "print(sorted(m for m in sys.modules if m.startswith(('ecgkern.bench', 'ecgkern.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
