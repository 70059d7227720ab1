"""``edge-maps build --executor ray`` on a local Ray instance writes the same bytes as the local executor."""

from __future__ import annotations

from pathlib import Path

import pytest

from maps.build import BuildConfig, build_cache

ray = pytest.importorskip("ray", reason="ray is an optional extra")


def _listing(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ray_executor_is_byte_identical_to_local(tiny_bundle, data_dir, tmp_path):
    maps = [data_dir / "maps" / "brighton_ortho_0p10m_x364_y377.tif",
            data_dir / "naip" / "naip_nd_20150926_x340_y330.tif"]
    local = build_cache(tiny_bundle, maps, tmp_path / "local", BuildConfig(progress=False))
    remote = build_cache(tiny_bundle, maps, tmp_path / "ray",
                         BuildConfig(executor="ray", tiles_per_task=1, progress=False))
    assert not ray.is_initialized(), "the local Ray instance the build started must be shut down"
    assert remote.tiles == local.tiles == 5 and remote.tiles_encoded == 4
    expected, got = _listing(tmp_path / "local"), _listing(tmp_path / "ray")
    assert sorted(got) == sorted(expected)
    for name, data in expected.items():
        assert got[name] == data, f"{name} differs between the Ray and the local build"
