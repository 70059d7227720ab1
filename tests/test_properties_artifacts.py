"""Property-based tests (hypothesis): a corrupt model bundle or map cache is detected before anything uses it.

Any single-byte change (xor with a random mask at a random offset) in any file a manifest lists, a truncated or
missing file, or damage to the manifest itself is refused by ``open_bundle`` / ``open_map_cache`` with their own
error naming the file; the service then fails its start (``StartupError`` naming the file, retained ``failed``
status) instead of running on corrupt features. The bundle is the session's ``tiny_bundle`` (copied, so the
original stays intact) and the cache is built from it on the real Brighton Beach orthophoto (``tests/data/maps``).
Each example restores the byte it changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.bundle import BundleError, open_bundle
from edge_runtime.locator import Locator, LocatorConfig
from edge_runtime.map_cache import MapCacheError, open_map_cache
from edge_runtime.service.config import load_config
from edge_runtime.service.sdnotify import Notifier
from edge_runtime.service.service import Service, StartupError
from maps.build import BuildConfig, build_cache


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def artifacts(tiny_bundle, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    cache = root / "cache"
    build_cache(bundle, [data_dir / "maps" / "brighton_ortho_0p10m_x364_y377.tif"], cache,
                BuildConfig(progress=False))
    return bundle, cache


def _listed(root: Path) -> list[str]:
    return sorted(json.loads((root / "manifest.json").read_text())["files"])


def _flip(path: Path, offset: int, mask: int) -> bytes:
    original = path.read_bytes()
    data = bytearray(original)
    data[offset % len(data)] ^= mask
    path.write_bytes(bytes(data))
    return original


@_settings(15)
@given(data=st.data())
def test_any_flipped_byte_in_a_bundle_file_is_named(artifacts, data):
    bundle, _ = artifacts
    name = data.draw(st.sampled_from(_listed(bundle)))
    path = bundle / name
    offset = data.draw(st.integers(0, path.stat().st_size - 1))
    original = _flip(path, offset, data.draw(st.integers(1, 255)))
    try:
        with pytest.raises(BundleError, match=rf"bundle file {path} is corrupt or modified"):
            open_bundle(bundle)
    finally:
        path.write_bytes(original)
    open_bundle(bundle)  # restored: verifies again


@_settings(40)
@given(data=st.data())
def test_any_flipped_byte_in_a_cache_file_is_named(artifacts, data):
    bundle, cache = artifacts
    name = data.draw(st.sampled_from(_listed(cache)))
    path = cache / name
    offset = data.draw(st.integers(0, path.stat().st_size - 1))
    original = _flip(path, offset, data.draw(st.integers(1, 255)))
    try:
        with pytest.raises(MapCacheError, match=rf"cache file {path} is corrupt or modified"):
            open_map_cache(cache, bundle=open_bundle(bundle, verify=False))
    finally:
        path.write_bytes(original)


@_settings(20)
@given(data=st.data())
def test_truncated_or_missing_files_are_named(artifacts, data):
    bundle, cache = artifacts
    root, error = data.draw(st.sampled_from([(bundle, BundleError), (cache, MapCacheError)]))
    name = data.draw(st.sampled_from(_listed(root)))
    path = root / name
    original = path.read_bytes()
    keep = data.draw(st.integers(-1, len(original) - 1))  # -1: the file is deleted
    try:
        if keep < 0:
            path.unlink()
        else:
            path.write_bytes(original[:keep])
        opener = open_bundle if root == bundle else open_map_cache
        with pytest.raises(error, match=str(path)):
            opener(root)
    finally:
        path.write_bytes(original)


@_settings(120)
@given(data=st.data())
def test_a_damaged_manifest_is_refused_with_the_module_error(artifacts, data):
    """A manifest with any byte changed either still describes intact files (a changed date, a changed number that
    is re-checked later) or is refused with BundleError / MapCacheError; nothing else (KeyError, TypeError) escapes."""
    bundle, cache = artifacts
    root, error, opener = data.draw(st.sampled_from([(bundle, BundleError, open_bundle),
                                                     (cache, MapCacheError, open_map_cache)]))
    path = root / "manifest.json"
    offset = data.draw(st.integers(0, path.stat().st_size - 1))
    original = _flip(path, offset, data.draw(st.integers(1, 255)))
    try:
        opener(root)
    except error as exc:
        assert str(root) in str(exc), str(exc)
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("target", ["bundle", "cache"])
def test_the_service_refuses_to_start_on_a_corrupt_artifact(artifacts, tmp_path, target):
    bundle, cache = artifacts
    root = bundle if target == "bundle" else cache
    path = root / _listed(root)[0]
    original = _flip(path, 100, 0x40)
    try:
        raw = {"vehicle_id": "c1", "bundle_dir": str(bundle), "cache_dir": str(cache),
               "source": {"kind": "mqtt"}, "mqtt": {"port": 1}}
        (tmp_path / "vehicle.yaml").write_text(yaml.safe_dump(raw))
        service = Service(load_config(tmp_path / "vehicle.yaml"), Locator, LocatorConfig(), notifier=Notifier(""))
        try:
            with pytest.raises(StartupError, match=rf"{path} is corrupt or modified"):
                service.start()
            assert service.locator is None and service.source is None  # nothing ran on the corrupt files
        finally:
            service.link.stop(None)
    finally:
        path.write_bytes(original)
