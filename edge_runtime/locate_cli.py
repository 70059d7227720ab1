"""``edge-locate``: the offline face of the onboard locator (one JSON object per image with ``--json``).

Contract (benchmarks rely on it): ``image``, ``ok``, and when ok ``map_id``, ``footprint_px`` (the image corners
(0,0), (w,0), (w,h), (0,h) in that map's pixel grid), ``lat``, ``lon``, ``heading_deg``, ``confidence``,
``inliers``, ``latency_ms`` (per stage and ``total``); when not ok, ``reason``.

``candidates`` lists the maps of the best-scoring query canvas's retrieval ranking (the fix, verified from up to
three hypotheses of any canvas, need not be among them); ``confidence`` is the retrieval score of the place the fix
(or the rejection) came from. Exit status: 0 when every image got a fix, 1 when some did not (each has its
``reason``), 2 when the locator could not start (bundle, cache, backend or the ``--calibration`` file).

Every image is located on its own unless ``--sequence`` says they are consecutive frames of one flight (then the
locator's temporal prior searches near the last fix first, as the onboard service does). ``--near LAT LON`` (a position
prior, e.g. the last GNSS fix) searches the maps within ``--near-radius-m`` of that point first, then every map.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.backends import BackendChoice, BackendError
from edge_runtime.locator import Locator, LocatorConfig, LocatorError
from edge_runtime.types import LocateResult, Priors

logger = logging.getLogger(__name__)


class FrameError(ValueError):
    """An image file that cannot be read as a frame."""


def read_frame(path: Path) -> np.ndarray:
    """Decode an image file to ``(H, W, 3)`` uint8 RGB (raises :class:`FrameError` naming the file)."""
    if path.is_dir():
        raise FrameError(f"{path} is a folder: pass image files (e.g. {path}/*.JPG)")
    if not path.is_file():
        raise FrameError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise FrameError(f"image file is empty: {path}")
    # the stored pixels, as the service decodes them: the EXIF/XMP priors and intrinsics describe those, so an EXIF
    # Orientation tag must not turn the image under them
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise FrameError(f"cannot decode image {path} (corrupt or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def frame_priors(path: Path, frame_shape: tuple[int, int], altitude: float | None, gsd: float | None,
                 use_exif: bool = True, sensor_width_mm: float | None = None,
                 utc_offset_h: float = 0.0, fallback_35mm: bool = True,
                 need_camera: bool = True) -> tuple[Priors, Any]:
    """Priors and intrinsics of an image file: command-line values first, then EXIF/XMP (DJI) when present.

    The EXIF/XMP priors are the service's (:func:`edge_runtime.service.telemetry.priors_from_metadata`: relative
    altitude, gimbal attitude, capture time with ``utc_offset_h`` for local EXIF times). A relative altitude that is not
    above the ground is dropped with a warning (the frame is still located, without a scale prior).
    ``sensor_width_mm`` gives the intrinsics of cameras whose metadata has a focal length in mm but no calibrated
    focal length in pixels (e.g. the DJI Phantom 3: 6.17 mm); without it such a camera gets the approximate
    ``FocalLengthIn35mmFilm`` focal length (``fallback_35mm``, a warning in the log), so that its EXIF altitude still
    gives the scale prior. A frame whose altitude prior cannot be used for want of intrinsics is logged as a warning.
    ``need_camera`` False (a calibration file gives the intrinsics) skips the EXIF intrinsics and their warnings.
    """
    from edge_runtime.service.telemetry import TelemetryError, priors_from_metadata

    camera = None
    priors = Priors(source="none")
    if use_exif and path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            from calibration.exif import camera_from_metadata, read_metadata

            meta = read_metadata(path)
        except (ValueError, OSError) as exc:  # no usable EXIF: the frame is still located, without those priors
            logger.info("%s: no EXIF/XMP priors (%s)", path.name, exc)
        else:
            if altitude is not None:  # the command line's altitude replaces the EXIF one (applied below)
                meta = replace(meta, relative_altitude_m=None)
            try:
                priors = priors_from_metadata(meta, utc_offset_h)
            except TelemetryError as exc:
                logger.warning("%s: altitude prior dropped: %s", path.name, exc)
                priors = priors_from_metadata(replace(meta, relative_altitude_m=None), utc_offset_h)
            try:
                if need_camera:  # not when a calibration file gives the intrinsics (no EXIF warnings then)
                    camera = camera_from_metadata(meta, sensor_width_mm=sensor_width_mm, fallback_35mm=fallback_35mm)
            except ValueError as exc:
                unused = gsd is None and (altitude is not None or priors.altitude_agl_m is not None)
                level = logging.WARNING if unused else logging.INFO
                logger.log(level, "%s: no intrinsics from EXIF/XMP, so no altitude scale prior (%s)", path.name, exc)
    if camera is not None and camera.size != (frame_shape[1], frame_shape[0]):
        camera = camera.scaled(frame_shape[1], frame_shape[0])
    return replace(priors, altitude_agl_m=altitude if altitude is not None else priors.altitude_agl_m,
                   frame_gsd_m=gsd), camera


def result_json(image: Path, result: LocateResult) -> dict[str, Any]:
    """The ``--json`` record of one frame."""
    out: dict[str, Any] = {"image": str(image), "ok": result.ok}
    if result.ok:
        out.update({
            "map_id": result.map_id,
            "footprint_px": np.round(np.asarray(result.footprint_px), 3).tolist(),
            "lat": result.lat, "lon": result.lon,
            "heading_deg": round(float(result.heading_deg), 3),
            "altitude_agl_m": None if result.altitude_agl_m is None else round(result.altitude_agl_m, 2),
            "std_m": None if result.std_m is None else [round(v, 3) for v in result.std_m],
        })
    else:
        out["reason"] = result.reason
        if result.map_id:
            out["map_id"] = result.map_id
    # retrieval ranking (best map first; the locator's shortlist), also when the fine stage failed
    out["candidates"] = [c["map_id"] for c in result.extra.get("candidates", [])]
    out["verified"] = len(result.extra.get("verified", []))  # retrieval hypotheses the fine stage ran on
    out.update({"confidence": round(float(result.confidence), 4), "inliers": int(result.inliers),
                "latency_ms": result.latency_ms, "backend": result.backend, "precision": result.precision,
                "degraded": result.degraded})
    return out


def write_viz(path: Path, frame: np.ndarray, result: LocateResult, locator: Locator) -> None:
    """Matches between the frame and the map region, and the footprint on the map.

    A frame without a fix gets a picture too, titled with the reason: the rejected candidate's inliers (red) and
    footprint when the fit got that far, else the frame alone.
    """
    from edge_runtime.viz import draw_matches, write_rgb_png

    rejected = result.extra.get("rejected") if not result.ok else None
    scale = 512.0 / max(frame.shape[:2])
    small = cv2.resize(frame, (round(frame.shape[1] * scale), round(frame.shape[0] * scale)))
    if not result.ok and rejected is None:
        picture = draw_matches(small, np.zeros((small.shape[0], 1, 3), np.uint8), np.zeros((0, 2)),
                               np.zeros((0, 2)), title=f"no fix: {result.reason}")
        write_rgb_png(str(path), picture)
        return
    source = result.extra if result.ok else rejected
    quad = np.asarray(result.footprint_px if result.ok else source["footprint_px"], dtype=np.float64)
    map_id = result.map_id
    entry = locator.cache.map(map_id)
    pad = 40
    x0, y0 = np.floor(quad.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int) + pad
    x0, y0 = max(int(x0), -entry.georef.width), max(int(y0), -entry.georef.height)  # a wild rejected fit
    x1, y1 = min(int(x1), 2 * entry.georef.width), min(int(y1), 2 * entry.georef.height)
    region, _ = entry.read_roi(x0, y0, max(x1 - x0, 1), max(y1 - y0, 1))
    in_f, in_r = source.get("matches", (np.zeros((0, 2)), np.zeros((0, 2))))
    title = f"{map_id} {result.lat:.6f},{result.lon:.6f}" if result.ok else f"no fix: {result.reason}"
    picture = draw_matches(small, region, np.asarray(in_f) * scale, np.asarray(in_r) - (x0, y0),
                           inliers=np.full(len(in_f), result.ok), footprint_pred=quad - (x0, y0), title=title)
    write_rgb_png(str(path), picture)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edge-locate``."""
    parser = argparse.ArgumentParser(prog="edge-locate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--calibration", type=Path, help="ROS camera_info YAML of the camera")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--altitude", type=float, help="altitude above ground in metres (overrides EXIF)")
    group.add_argument("--gsd", type=float, help="frame ground sampling distance in metres per pixel")
    parser.add_argument("--no-exif", action="store_true", help="ignore EXIF/XMP priors")
    parser.add_argument("--near", nargs=2, type=float, metavar=("LAT", "LON"),
                        help="WGS84 decimal degrees (e.g. -33.8568 151.2153) of a point the images are expected "
                             "near, such as the last GNSS fix: the maps around it are searched first, then every map")
    parser.add_argument("--near-radius-m", type=float,
                        help=f"how far from --near to search first (default {LocatorConfig.prior_radius_m:g} m)")
    parser.add_argument("--utc-offset-h", type=float, default=0.0,
                        help="hours local time is ahead of UTC, for EXIF capture times without an offset tag "
                             "(DJI writes local time; default %(default)s)")
    parser.add_argument("--sensor-width-mm", type=float,
                        help="sensor width for EXIF intrinsics without a calibrated focal length (Phantom 3: 6.17)")
    parser.add_argument("--exact-intrinsics", action="store_true",
                        help="refuse the approximate EXIF FocalLengthIn35mmFilm focal length for cameras without a "
                             "calibrated one (their frames then get no altitude scale prior)")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    parser.add_argument("--allow-fallback", action="store_true", help="fall back to ONNX Runtime if TensorRT fails")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16"],
                        help="ONNX graphs ONNX Runtime runs (auto: FP32 on the CPU, which every bundle holds; an "
                        "FP16 bundle's FP16 graphs are for GPUs)")
    parser.add_argument("--verify-candidates", type=int, default=LocatorConfig.verify_candidates,
                        help="retrieval hypotheses the fine stage may verify per frame (best first, until one is "
                             "accepted; default %(default)s)")
    parser.add_argument("--no-refine", dest="refine", action="store_false",
                        help="verify each hypothesis in one pass (no re-rendered second pass; for diagnosis: the "
                             "bundle's acceptance rule is calibrated with the refinement)")
    parser.add_argument("--sequence", action="store_true",
                        help="the images are consecutive frames of one flight, in capture order: search near the "
                             "last fix first (the temporal prior). Default: every image on its own")
    parser.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    parser.add_argument("--viz", type=Path, help="write a picture per frame into this folder")
    parser.add_argument("--no-verify", action="store_true", help="skip hash verification of bundle and cache")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    for name in ("altitude", "gsd", "near_radius_m"):
        value = getattr(args, name)
        if value is not None and not (np.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    near: dict[str, float | None] = {}
    if args.near is not None:
        near = {"near_lat": args.near[0], "near_lon": args.near[1], "near_radius_m": args.near_radius_m}
        try:
            Priors(**near)  # latitude / longitude ranges, the radius
        except ValueError as exc:
            parser.error(f"--near / --near-radius-m: {exc}")
    elif args.near_radius_m is not None:
        parser.error("--near-radius-m needs --near")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    camera = None
    if args.calibration:
        from calibration.camera_info import read_camera_info

        try:
            camera = read_camera_info(args.calibration)
        except (OSError, ValueError) as exc:  # missing, unreadable, not YAML, not camera_info
            print(f"edge-locate: error: --calibration: {exc}", file=sys.stderr)
            return 2
    try:
        config = LocatorConfig(backend=BackendChoice(args.backend, allow_fallback=args.allow_fallback,
                                                     precision=args.precision),
                               verify_candidates=args.verify_candidates, refine=args.refine,
                               temporal_prior=args.sequence,
                               verify=not args.no_verify)
    except ValueError as exc:
        parser.error(str(exc))
    t0 = time.perf_counter()
    try:
        locator = Locator.open(args.bundle, args.cache, config)
    except (ValueError, FileNotFoundError, BackendError) as exc:
        print(f"edge-locate: error: {exc}", file=sys.stderr)
        return 2
    if args.viz:
        args.viz.mkdir(parents=True, exist_ok=True)
    failures = 0
    for image in args.images:
        frame = None
        try:
            frame = read_frame(image)
            priors, exif_camera = frame_priors(image, frame.shape[:2], args.altitude, args.gsd, not args.no_exif,
                                               args.sensor_width_mm, args.utc_offset_h,
                                               fallback_35mm=not args.exact_intrinsics, need_camera=camera is None)
            if near:
                priors = replace(priors, **near)
            cam = camera if camera is not None else exif_camera
            if cam is not None and cam.size != (frame.shape[1], frame.shape[0]):
                cam = cam.scaled(frame.shape[1], frame.shape[0])
            result = locator.locate(frame, priors, cam)
        except (FrameError, LocatorError, ValueError) as exc:
            result = LocateResult.failure(f"bad input: {exc}")
        failures += not result.ok
        record = result_json(image, result)
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            where = f"{result.lat:.7f}, {result.lon:.7f} on {result.map_id}" if result.ok else result.reason
            print(f"{image.name}: {where} ({result.latency_ms.get('total', 0):.0f} ms)", flush=True)
        if args.viz and frame is not None:
            write_viz(args.viz / f"{image.stem}.png", frame, result, locator)
    logger.info("%d images in %.1f s", len(args.images), time.perf_counter() - t0)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
