"""The wheel's contents as pyproject.toml declares them: every subpackage, every kernel source,
the bundled data. (CI's .ci/check_wheel.sh builds and installs the wheel itself.)"""
import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _shipped(folder: Path, patterns) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)}


def test_every_subpackage_is_listed():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ecgkern").rglob("__init__.py")}
    missing = found - set(CONFIG["packages"])
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages, or the wheel leaves them out"


def test_every_kernel_source_ships_as_ecgkern_csrc():
    assert CONFIG["package-dir"]["ecgkern.csrc"] == "csrc" and "ecgkern.csrc" in CONFIG["packages"]
    sources = {p.name for p in (ROOT / "csrc").iterdir() if p.is_file()}
    assert sources, "csrc/ is empty"
    assert _shipped(ROOT / "csrc", CONFIG["package-data"]["ecgkern.csrc"]) == sources


def test_the_bundled_data_ships():
    patterns = [p.removeprefix("data/") for p in CONFIG["package-data"]["ecgkern"] if p.startswith("data/")]
    files = {p.name for p in (ROOT / "ecgkern" / "data").iterdir() if p.is_file()}
    assert _shipped(ROOT / "ecgkern" / "data", patterns) == files
