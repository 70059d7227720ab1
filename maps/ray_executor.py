"""``--executor ray``: spread tile encoding over a Ray cluster (optional dependency ``ray``).

Each Ray task encodes a chunk of tiles of one map with the same code as the local path
(:func:`maps.build.encode_tile`); the driver writes the results into the cache arrays by tile index, so the output is
byte-identical to a local build. Workers open the bundle and the source raster by PATH: on a multi-node cluster both
must be visible at the same paths on every node (shared storage). A worker process keeps its encoder session between
tasks.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from maps.build import BuildConfig, EncoderSpec, MapPlan, MapsError

logger = logging.getLogger(__name__)

_SESSIONS: dict[tuple[str, str, str, str, int], Any] = {}


def require_ray() -> None:
    """Raise :class:`MapsError` with the install hint when Ray is not importable."""
    if importlib.util.find_spec("ray") is None:
        raise MapsError("--executor ray needs the optional package 'ray' (pip install 'ray==2.60.0'); "
                        "or use --executor local")


def _encoder_session(bundle_root: str, bundle_id: str, backend: str, device: str, threads: int,
                     precision: str) -> Any:
    """This worker process's encoder backend for a bundle (opened and verified once per process)."""
    key = (bundle_root, bundle_id, backend, device, threads, precision)
    if key not in _SESSIONS:
        from edge_runtime.backends import BackendChoice, open_graph
        from edge_runtime.bundle import open_bundle

        bundle = open_bundle(bundle_root)
        if bundle.bundle_id != bundle_id:
            raise MapsError(f"Ray worker on {os.uname().nodename}: bundle at {bundle_root} is {bundle.bundle_id}, "
                            f"the driver uses {bundle_id}")
        choice = BackendChoice(backend=backend, device=device, allow_fallback=False, threads=threads,  # type: ignore[arg-type]
                               precision=precision)  # type: ignore[arg-type]
        _SESSIONS[key] = open_graph(bundle, "encoder_tile", choice).backend
    return _SESSIONS[key]


def encode_chunk(
    bundle_root: str,
    bundle_id: str,
    backend: str,
    device: str,
    threads: int,
    precision: str,
    source: str,
    read_spec: dict[str, Any],
    tiles: list[tuple[int, int, int]],
    encoder: EncoderSpec,
    min_valid_fraction: float,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Encode tiles ``(index, x0, y0)`` of one map (runs inside a Ray worker; also callable directly).

    Returns:
        ``(index, coarse (N, C) float16, cell_valid (N,) bool)`` per tile.
    """
    from edge_runtime.map_cache import RasterReadSpec, RasterSource
    from maps.build import encode_tile

    session = _encoder_session(bundle_root, bundle_id, backend, device, threads, precision)
    raster = RasterSource(source, RasterReadSpec.from_dict(read_spec))
    try:
        out = []
        for idx, x0, y0 in tiles:
            coarse, cells = encode_tile(session, raster, (x0, y0), encoder, min_valid_fraction)
            out.append((int(idx), coarse, cells))
        return out
    finally:
        raster.close()


class RayRunner:
    """Submits chunks of tiles as Ray tasks and yields results as they finish (bounded number in flight).

    Starts a local Ray instance when ``config.ray_address`` is ``None`` and Ray is not initialised yet (and shuts
    it down in :meth:`close`); otherwise connects to the given cluster.
    """

    def __init__(self, bundle_root: str | os.PathLike[str], bundle_id: str, config: BuildConfig) -> None:
        require_ray()
        import ray

        self.config = config
        self.bundle_root = str(Path(bundle_root).resolve())
        self.bundle_id = bundle_id
        self._started = False
        if not ray.is_initialized():
            package_root = str(Path(__file__).resolve().parent.parent)
            path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
            ray.init(address=config.ray_address, include_dashboard=False, logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
            self._started = True
        self._remote = ray.remote(num_cpus=1)(encode_chunk)
        self.max_in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        logger.info("Ray executor: %s, %d tasks in flight", ray.cluster_resources(), self.max_in_flight)

    def results(
        self, plan: MapPlan, todo: np.ndarray, encoder: EncoderSpec, min_valid_fraction: float
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Encode the tiles ``todo`` of ``plan``; yields ``(tile_index, coarse, cell_valid)`` in completion order."""
        import ray

        origins = plan.grid.origins()
        tiles = [(int(i), int(origins[i, 0]), int(origins[i, 1])) for i in todo]
        step = self.config.tiles_per_task
        chunks = [tiles[k : k + step] for k in range(0, len(tiles), step)]
        args = (self.bundle_root, self.bundle_id, self.config.backend, self.config.device, self.config.threads,
                self.config.precision, str(plan.path), plan.read_spec.to_dict())
        pending: list[Any] = []
        next_chunk = 0
        try:
            while next_chunk < len(chunks) or pending:
                while next_chunk < len(chunks) and len(pending) < self.max_in_flight:
                    pending.append(self._remote.remote(*args, chunks[next_chunk], encoder, min_valid_fraction))
                    next_chunk += 1
                ready, pending = ray.wait(pending, num_returns=1)
                yield from ray.get(ready[0])
        finally:
            for ref in pending:
                ray.cancel(ref)

    def close(self) -> None:
        """Shut down the Ray instance this runner started."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
