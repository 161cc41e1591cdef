"""The layout rule a reader sees in the tree: toolkit code and MobileR2L never import NAS-NeRF."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INDEPENDENT_OF_NAS_NERF = ["common", "data", "mobile_r2l", "export"]
NAS_NERF_FILES = {"__init__.py", "cell.py", "field.py", "model.py", "complexity.py", "configs.py"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("folder", INDEPENDENT_OF_NAS_NERF)
def test_mobile_r2l_and_the_toolkit_never_import_nas_nerf(folder: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.split(".")[0] == "nas_nerf")
        for path in (ROOT / "nerfstudio_mobile" / folder).rglob("*.py")
    }
    assert not {path: modules for path, modules in offenders.items() if modules}


def test_nas_nerf_holds_nas_nerf_alone() -> None:
    files = {path.name for path in (ROOT / "nas_nerf").glob("*.py")}
    assert files <= NAS_NERF_FILES, files - NAS_NERF_FILES
    assert (ROOT / "nas_nerf" / "search").is_dir()


@pytest.mark.slow  # a fresh interpreter importing nerfstudio
def test_nerfstudio_mobile_imports_without_nas_nerf() -> None:
    """The MobileR2L method loads in a process where nas_nerf cannot be imported at all."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['nas_nerf'] = None\n"
        "import nerfstudio_mobile.mobile_r2l.configs, nerfstudio_mobile.export.cli, nerfstudio_mobile.data.llff"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
