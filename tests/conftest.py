"""Shared fixtures: paths to the bundled real imagery and a CUDA skip for ``gpu`` tests."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests when CUDA is unavailable (torch may be absent on a vehicle install)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of the real imagery copied into the repository (see tests/data/README.md)."""
    return DATA


TOPICS = Path(__file__).resolve().parent.parent / "topicgeo" / "assets" / "topics_minilm.npz"
REFERENCE = Path(__file__).resolve().parent.parent / "topicgeo" / "assets" / "topicgeo_cpu.pt"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``cpu``-preset checkpoint with real MiniLM topic metadata: the committed reference weights when present
    (parity tests then run on trained activations), else a seeded random initialisation."""
    import torch

    from topicgeo.checkpoint import load_model, save_checkpoint
    from topicgeo.config import get_preset
    from topicgeo.model import TopicGeo
    from topicgeo.train.trainer import load_prompts_matrix, topics_metadata

    prompts = load_prompts_matrix(TOPICS)
    torch.manual_seed(0)
    if REFERENCE.exists():
        model = load_model(REFERENCE)
    else:
        model = TopicGeo(get_preset("cpu").with_prompts(*prompts.shape), prompts=prompts)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, {"topics": topics_metadata(TOPICS), "step": 0})
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fp32 bundle (query 256 px, tiles 512 px) exported once per test session from ``tiny_checkpoint``."""
    from export.bundle_writer import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny_bundle"
    return export_bundle(tiny_checkpoint, out, ExportConfig("fp32", 256, 512, build_engines=False))


@pytest.fixture(scope="session")
def fp16_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FP16 bundle (FP32 and FP16 graphs; query 256 px, tiles 512 px), exported once per test session."""
    from export.bundle_writer import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("fp16") / "bundle"
    return export_bundle(tiny_checkpoint, out, ExportConfig("fp16", 256, 512, build_engines=False))


@pytest.fixture(scope="session")
def map_paths(data_dir: Path) -> list[Path]:
    """Real GeoTIFF crops in three CRSs (EPSG:32615, 32611, 26914) used by the map-cache tests."""
    return [
        data_dir / "maps" / "brighton_ortho_0p10m_x364_y377.tif",
        data_dir / "sjer" / "2018" / "SJER_002.tif",
        data_dir / "naip" / "naip_nd_20150926_x340_y330.tif",
    ]


DEMO = Path(__file__).resolve().parent.parent / "demo_data" / "brighton"


@pytest.fixture(scope="session")
def reference_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The vehicle's artefacts for the bundled Brighton demo: an fp32 bundle (512-px query and tiles) exported from the
    committed reference checkpoint and the map cache of the bundled orthophotos, built once per session (skips when the
    checkpoint is not committed). Returns ``(bundle, cache)``."""
    if not REFERENCE.exists():
        pytest.skip("reference checkpoint not committed")
    from export.bundle_writer import ExportConfig, export_bundle
    from maps.build import BuildConfig, build_cache

    work = tmp_path_factory.mktemp("reference_demo")
    bundle = export_bundle(REFERENCE, work / "bundle", ExportConfig("fp32", 512, 512, build_engines=False))
    cache = work / "cache"
    build_cache(bundle, sorted((DEMO / "maps").glob("*.tif")), cache, BuildConfig(progress=False))
    return bundle, cache


@pytest.fixture(scope="session")
def demo_script():
    """``scripts/demo_brighton.py`` as a module (the README demo: its broker route, report and footprint picture)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_brighton", DEMO.parent.parent / "scripts" / "demo_brighton.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def truth(demo_script) -> dict[str, tuple[float, float]]:
    """SfM camera positions of the bundled Brighton frames, ``{file name: (lat, lon)}`` (the demo's own reader)."""
    return demo_script.truth()
