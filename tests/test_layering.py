"""Layering: the onboard core never imports torch, and the offline tools import the core, never the reverse."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_vehicle_modules_do_not_load_torch() -> None:
    code = (
        "import sys\n"
        "import edge_runtime.locator, edge_runtime.locate_cli, edge_runtime.service.cli\n"
        "import edge_runtime.map_cache\n"
        "import edge_runtime.backends, edge_runtime.mavlink, calibration.geometry, calibration.exif\n"
        "off = ('torch.', 'topicgeo', 'export', 'maps')\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(off))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"the vehicle side imported {out.stdout.strip()}"


def _imports(package: str) -> set[str]:
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_import_arrows_point_one_way() -> None:
    assert not _imports("edge_runtime") & {"torch", "topicgeo", "export", "maps"}
    assert not _imports("calibration") & {"torch", "topicgeo", "export", "maps", "edge_runtime"}
    assert not _imports("topicgeo") & {"export", "maps"}  # training never imports the offline tools
    assert not _imports("maps") & {"export", "topicgeo", "torch"}  # map ingest runs without the training stack
