"""Tiled retrieval by RANSAC inliers: the peers' localisation pipeline (SUPP's baseline treatment).

Offline, every map is cut into tiles with 25 % area overlap (:mod:`benchmarks.peers.tiling`) and each tile's features
are computed once (the peers' counterpart of the project's base-map cache). Per frame: the frame is brought to the
query size (long side ``query_side``; the synthetic queries are already 512 px), its features are matched against
every tile, a MAGSAC homography is fitted per tile (:func:`edge_runtime.numerics.geometry.estimate_homography`, the
same call and threshold as the project's locator), and the tile with the most inliers wins; maps are ranked by their
best tile. The output is a record of the ``edge-locate --json`` contract, so one scorer serves every method.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.peers.matchers import MatcherConfig, make_matcher
from benchmarks.peers.tiling import Tile, TilingConfig, tile_map
from edge_runtime.numerics.geometry import estimate_homography, footprint, is_convex_quad, project_points

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerConfig:
    """Peer locator parameters.

    Attributes:
        matcher: which matcher and its settings.
        tiling: tile size (map pixels) and area overlap.
        query_side: frames with a longer side are downscaled (INTER_AREA) to this long side before matching.
        homography_threshold_px: MAGSAC threshold in tile pixels (the project's locator uses 4).
        min_inliers: fewest homography inliers for a located frame. 4 (default) = any valid MAGSAC homography counts,
            as in ``topicgeo/eval/evaluate.py``'s SIFT baseline and evaluation.md's reference peers; the project's
            locator requires 12.
        mask_black: ignore keypoints on exactly black pixels (the synthetic queries' outside-the-map corners), after
            a 5-px erosion of the non-black area.
        rotations: 1 = the query as given (the peers' published use); 4 = also try it turned by 90, 180 and 270
            degrees and keep the most inliers (helps matchers that are not rotation invariant, at 4x the cost).
    """

    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    query_side: int = 512
    homography_threshold_px: float = 4.0
    min_inliers: int = 4
    mask_black: bool = True
    rotations: int = 1

    def __post_init__(self) -> None:
        if self.rotations not in (1, 4):
            raise ValueError(f"rotations must be 1 or 4, got {self.rotations}")
        if self.query_side < 32:
            raise ValueError(f"query_side must be >= 32 px, got {self.query_side}")
        if self.homography_threshold_px <= 0 or self.min_inliers < 4:
            raise ValueError("homography_threshold_px must be > 0 and min_inliers >= 4")


def scale_matrix(sx: float, sy: float | None = None) -> np.ndarray:
    """``(3, 3)`` float64 resize by ``(sx, sy)`` in the pixel-centre convention: ``x' = (x + 0.5) * sx - 0.5``."""
    sy = sx if sy is None else sy
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def translation_matrix(dx: float, dy: float) -> np.ndarray:
    """``(3, 3)`` float64 translation by ``(dx, dy)``."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def rot90_matrix(width: int, height: int, k: int) -> np.ndarray:
    """``(3, 3)`` float64 map from pixels of a ``width x height`` image to pixels of ``np.rot90(image, k)``.

    ``np.rot90`` (k = 1) turns the image counter-clockwise: output pixel ``(x', y')`` shows input pixel
    ``(W - 1 - y', x')``, i.e. ``x' = y``, ``y' = W - 1 - x``.
    """
    M = np.eye(3)
    w = width
    for _ in range(k % 4):
        step = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0], [0.0, 0.0, 1.0]])
        M = step @ M
        w = height if w == width else width
    return M


def frame_to_map_homography(H_query_to_tile: np.ndarray, frame_to_query: np.ndarray, tile: Tile,
                            rotation: np.ndarray | None = None) -> np.ndarray:
    """Compose frame px -> (resized) query px -> (turned) query px -> tile px -> map px.

    Args:
        H_query_to_tile: ``(3, 3)`` homography from the resized (and turned) query to the tile.
        frame_to_query: ``(3, 3)`` frame px -> resized query px (:func:`scale_matrix`).
        tile: the tile (its origin in map pixels).
        rotation: optional ``(3, 3)`` :func:`rot90_matrix` applied to the resized query before matching.

    Returns:
        ``(3, 3)`` float64 normalised so that ``H[2, 2] = 1``.
    """
    R = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
    H = translation_matrix(tile.x0, tile.y0) @ np.asarray(H_query_to_tile, np.float64) @ R @ frame_to_query
    return H / H[2, 2]


def nonblack_mask(image: np.ndarray, erode_px: int = 5) -> np.ndarray:
    """``(H, W)`` bool: pixels that are not exactly black (0, 0, 0), eroded by ``erode_px``."""
    mask = (image.max(axis=2) > 0).astype(np.uint8)
    if erode_px > 0:
        kernel = np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8)
        mask = cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return mask.astype(bool)


@dataclass
class MapTiles:
    """One map's georeference and its tiles' features."""

    map_id: str
    path: Path
    width: int
    height: int
    pixel_to_world: np.ndarray
    crs_wkt: str | None
    tiles: list[Tile]
    features: list[Any]
    to_lonlat: Any = None  # pyproj Transformer map CRS -> WGS84 (built once; None without a CRS)


class PeerLocator:
    """Peer localisation over a set of GeoTIFF maps (ids = file stems, as in the project's cache)."""

    def __init__(self, maps: list[Path], config: PeerConfig) -> None:
        from topicgeo.data.raster import GeoRaster

        if not maps:
            raise ValueError("PeerLocator needs at least one map")
        stems = [Path(m).stem for m in maps]
        if len(set(stems)) != len(stems):
            raise ValueError(f"map file stems must be unique (they are the map ids): {stems}")
        self.config = config
        self.matcher = make_matcher(config.matcher)
        self.maps: list[MapTiles] = []
        t0 = time.perf_counter()
        for path in maps:
            raster = GeoRaster(path)
            image, valid = raster.read_rgb()
            tiles = tile_map(raster.width, raster.height, config.tiling)
            feats = []
            for t in tiles:
                crop = np.ascontiguousarray(image[t.y0 : t.y0 + t.height, t.x0 : t.x0 + t.width])
                vmask = valid[t.y0 : t.y0 + t.height, t.x0 : t.x0 + t.width]
                feats.append(self.matcher.extract(crop, vmask))
            wkt = None if raster.crs is None else raster.crs.to_wkt()
            self.maps.append(MapTiles(Path(path).stem, Path(path), raster.width, raster.height,
                                      raster.pixel_to_world, wkt, tiles, feats, _lonlat_transformer(wkt)))
            raster.close()
        self.prepare_seconds = time.perf_counter() - t0
        self.n_tiles = sum(len(m.tiles) for m in self.maps)
        logger.info("%s: %d tiles of %d maps prepared in %.1f s", config.matcher.method, self.n_tiles,
                    len(self.maps), self.prepare_seconds)

    def locate(self, frame: np.ndarray, camera: Any = None, priors: Any = None) -> dict[str, Any]:
        """Locate one RGB frame ``(H, W, 3)`` uint8; returns the ``edge-locate --json`` fields (without ``image``).

        With a ``camera`` the position is the camera centre by the project locator's pose step
        (:func:`camera_position`): from the attitude prior's roll and pitch (``priors``, an
        :class:`~edge_runtime.types.Priors`) with the fit's heading and scale when there is one, else a 6-DoF PnP pose.

        Extra fields: ``candidates`` (map ids ranked by their best tile's inliers, maps without a homography left
        out) and ``tile`` (the winning tile's origin and size).
        """
        lat: dict[str, float] = {}
        t0 = time.perf_counter()
        h, w = frame.shape[:2]
        s = min(1.0, self.config.query_side / max(h, w))
        if s < 1.0:
            query = cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        else:
            query = frame
        S = scale_matrix(query.shape[1] / w, query.shape[0] / h)
        qh, qw = query.shape[:2]
        mask = nonblack_mask(query) if self.config.mask_black else None
        best: tuple[int, MapTiles, Tile, Any] | None = None
        per_map: dict[str, int] = {}
        t_ransac = t_feat = 0.0
        for k in range(self.config.rotations):
            tf = time.perf_counter()
            turned = np.ascontiguousarray(np.rot90(query, k))
            fq = self.matcher.extract(turned, None if mask is None else np.rot90(mask, k))
            t_feat += time.perf_counter() - tf
            size = (turned.shape[1], turned.shape[0])
            for m in self.maps:
                for tile, ft in zip(m.tiles, m.features, strict=True):
                    pq, pt = self.matcher.match(fq, ft)
                    if len(pq) < 4:
                        continue
                    tr = time.perf_counter()
                    hom = estimate_homography(pq, pt, self.config.homography_threshold_px, image_size=size)
                    t_ransac += time.perf_counter() - tr
                    if not hom.ok:
                        continue
                    n = hom.num_inliers
                    per_map[m.map_id] = max(per_map.get(m.map_id, 0), n)
                    if best is None or n > best[0]:
                        best = (n, m, tile, (hom.H, pq[hom.inliers], pt[hom.inliers], rot90_matrix(qw, qh, k)))
        lat["features"] = round(t_feat * 1000.0, 2)
        lat["ransac"] = round(t_ransac * 1000.0, 2)
        lat["match"] = round(_ms(t0) - lat["ransac"] - lat["features"], 2)
        candidates = sorted(per_map, key=lambda k: -per_map[k])
        common = {"candidates": candidates, "backend": f"peer:{self.config.matcher.method}"}
        if best is None or best[0] < self.config.min_inliers:
            n = 0 if best is None else best[0]
            lat["total"] = _ms(t0)
            return {"ok": False, "reason": f"no tile with >= {self.config.min_inliers} homography inliers (best {n})",
                    "confidence": 0.0, "inliers": n, "latency_ms": lat, **common}
        n, m, tile, (H_qt, in_q, in_t, R) = best
        H = frame_to_map_homography(H_qt, S, tile, R)
        quad = footprint(H, w, h)
        if not is_convex_quad(quad):
            lat["total"] = _ms(t0)
            return {"ok": False, "reason": "degenerate footprint", "map_id": m.map_id, "confidence": 0.0,
                    "inliers": n, "latency_ms": lat, **common}
        tp = time.perf_counter()
        centre = project_points(H, np.array([[(w - 1) / 2.0, (h - 1) / 2.0]]))[0]
        position = "frame centre ground point (nadir assumption)"
        world = _apply(m.pixel_to_world, centre[None])[0]
        if camera is not None and m.crs_wkt is not None:
            in_frame = _apply(np.linalg.inv(R @ S), in_q)
            ground = _apply(m.pixel_to_world, in_t + np.array([tile.x0, tile.y0], np.float64))
            cam, how = camera_position(H, in_frame, ground, m.pixel_to_world, camera, priors, (w, h))
            if cam is not None:
                world, position = cam, f"camera centre ({how}, as the project's locator)"
        lon, lat_deg = _to_lonlat(m.to_lonlat, world)
        lat["pose"] = _ms(tp)
        lat["total"] = _ms(t0)
        return {"ok": True, "map_id": m.map_id, "footprint_px": np.round(quad, 3).tolist(), "lat": lat_deg,
                "lon": lon, "heading_deg": _heading(H, w, h, m.pixel_to_world), "confidence": min(1.0, n / 100.0),
                "inliers": int(n), "latency_ms": lat, "position": position,
                "tile": [tile.x0, tile.y0, tile.width, tile.height], **common}


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 2)


def _apply(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.asarray(pts, np.float64) @ M[:, :2].T + M[:, 2]
    return p[:, :2] / p[:, 2:3]


def _heading(H: np.ndarray, w: int, h: int, pixel_to_world: np.ndarray) -> float:
    """Frame 'up' direction on the map, degrees clockwise from grid north."""
    c = np.array([[(w - 1) / 2.0, (h - 1) / 2.0], [(w - 1) / 2.0, (h - 1) / 2.0 - 1.0]])
    world = _apply(pixel_to_world, project_points(H, c))
    d = world[1] - world[0]
    return round((math.degrees(math.atan2(d[0], d[1])) + 360.0) % 360.0, 3)


def camera_position(H: np.ndarray, in_frame: np.ndarray, ground: np.ndarray, pixel_to_world: np.ndarray, camera: Any,
                    priors: Any, frame_size: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """Camera east/north as the project's locator places it (``Locator._pose``), and how.

    With a roll / pitch prior: :func:`~edge_runtime.locator.position_from_attitude_prior` (the locator's own), at the
    altitude the fit's scale implies at the frame centre. Otherwise a 6-DoF PnP pose from the frame <-> ground inliers
    ``in_frame, ground (N, 2)`` over flat ground. ``H (3, 3)``: frame px -> map px; ``pixel_to_world``: the map's
    ``(3, 3)``.
    """
    from edge_runtime.locator import altitude_from_scale, local_scale, position_from_attitude_prior

    w, h = frame_size
    if priors is not None:
        gsd = math.sqrt(abs(np.linalg.det(pixel_to_world[:2, :2])))
        altitude = altitude_from_scale(local_scale(H, ((w - 1) / 2.0, (h - 1) / 2.0)), gsd, camera)
        # the peers' maps are in a metric CRS (UTM): the affine's linear part is their ground metric
        px = position_from_attitude_prior(H, camera, pixel_to_world[:2, :2], altitude,
                                          _heading(H, w, h, pixel_to_world), priors)
        if px is not None:
            return _apply(pixel_to_world, px[None])[0], "attitude prior, fitted heading and scale"
    return _pnp_position(in_frame, ground, camera), "6-DoF PnP pose"


def _pnp_position(in_frame: np.ndarray, ground: np.ndarray, camera: Any) -> np.ndarray | None:
    """Camera east/north from frame <-> ground inliers (flat ground, IPPE), as the project's locator does."""
    from calibration.geometry import PoseConfig, estimate_pose

    keep = np.linspace(0, len(in_frame) - 1, min(len(in_frame), 400)).astype(int)
    try:
        pose = estimate_pose(in_frame[keep], ground[keep], camera, config=PoseConfig(ransac_threshold_px=8.0))
    except (ValueError, np.linalg.LinAlgError) as exc:
        logger.info("no 6-DoF pose: %s", exc)
        return None
    return np.asarray(pose.position[:2], np.float64)


def _lonlat_transformer(crs_wkt: str | None) -> Any:
    if crs_wkt is None:
        return None
    from pyproj import CRS, Transformer

    return Transformer.from_crs(CRS.from_wkt(crs_wkt), CRS.from_epsg(4326), always_xy=True)


def _to_lonlat(transformer: Any, world: np.ndarray) -> tuple[float | None, float | None]:
    if transformer is None:
        return None, None
    lon, lat = transformer.transform(float(world[0]), float(world[1]))
    return float(lon), float(lat)
