"""Intrinsic calibration from board views: pinhole (``cv2.calibrateCamera``) or fisheye (``cv2.fisheye.calibrate``).

Input is a folder of images or a video file (every ``video_every``-th frame is used). All views must have one size;
each view is detected and accepted or rejected with a reason (see :mod:`calibration.board`). The result carries the
``CameraInfo`` (ROS ``plumb_bob`` or ``equidistant``), the overall RMS reprojection error, a residual per accepted view
and a mosaic picture of the detected corners. The projection matrix ``P`` follows ROS ``camera_calibration``: the
optimal new camera matrix for ``alpha``/``balance`` 0 (undistorted image without invalid pixels).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from calibration.board import BoardDetection, BoardSpec, ChessboardSpec, DetectionConfig, detect_board
from calibration.camera_info import CameraInfo
from calibration.io import atomic_write_bytes

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MODELS = ("pinhole", "fisheye")
_TILE_WIDTH = 320
_MAX_TILES = 60


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of one calibration run.

    Attributes:
        board: the board seen in the views.
        model: ``"pinhole"`` (ROS ``plumb_bob``: k1, k2, p1, p2, k3) or ``"fisheye"`` (ROS ``equidistant``).
        detection: per-view acceptance rules.
        min_views: fewest accepted views to calibrate from.
        camera_name: written into the camera_info.
        alpha: free scaling for ``P`` (0: only valid pixels, 1: all source pixels); ``balance`` for fisheye.
        video_every: use every n-th frame of a video.
        video_max_frames: stop after this many sampled frames.
    """

    board: BoardSpec
    model: str = "pinhole"
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    min_views: int = 5
    camera_name: str = "camera"
    alpha: float = 0.0
    video_every: int = 15
    video_max_frames: int = 200

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"calibration model must be one of {MODELS}, got {self.model!r}")
        if self.min_views < 3:
            raise ValueError(f"min_views must be >= 3, got {self.min_views}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.video_every < 1 or self.video_max_frames < 1:
            raise ValueError(
                f"video_every and video_max_frames must be >= 1, got {self.video_every}, {self.video_max_frames}"
            )


@dataclass(frozen=True)
class ViewReport:
    """One view's outcome: accepted with a residual, or rejected with a reason.

    Attributes:
        name: file name or frame label.
        accepted: used for calibration.
        reason: why it was rejected ("" when accepted).
        residual_px: RMS reprojection error of this view's corners after calibration (accepted views only).
        sharpness: variance of the Laplacian over the board (None when no board was found).
        n_points: corners detected.
    """

    name: str
    accepted: bool
    reason: str
    residual_px: float | None
    sharpness: float | None
    n_points: int


@dataclass(frozen=True)
class CalibrationResult:
    """Calibrated camera and diagnostics.

    Attributes:
        camera: the intrinsics.
        rms_px: overall RMS reprojection error in pixels (as returned by OpenCV).
        views: one report per input view, in input order.
        corners_picture: ``(H, W, 3)`` uint8 BGR mosaic of the views with detected corners and reasons.
    """

    camera: CameraInfo
    rms_px: float
    views: tuple[ViewReport, ...]
    corners_picture: np.ndarray = field(repr=False)

    @property
    def accepted(self) -> tuple[ViewReport, ...]:
        """Reports of the views used."""
        return tuple(v for v in self.views if v.accepted)

    @property
    def rejected(self) -> tuple[ViewReport, ...]:
        """Reports of the views left out."""
        return tuple(v for v in self.views if not v.accepted)

    def summary(self) -> str:
        """Multi-line text: RMS, intrinsics, per-view residuals and rejection reasons."""
        cam = self.camera
        lines = [
            f"model: {cam.distortion_model}  image: {cam.width}x{cam.height}  views used: "
            f"{len(self.accepted)} of {len(self.views)}",
            f"RMS reprojection error: {self.rms_px:.4f} px",
            f"fx={cam.fx:.3f} fy={cam.fy:.3f} cx={cam.cx:.3f} cy={cam.cy:.3f}  D={np.array2string(cam.D, precision=5)}",
            "per-view residuals (px):",
        ]
        for v in self.views:
            if v.accepted:
                lines.append(f"  {v.name}: {v.residual_px:.4f}  (sharpness {v.sharpness:.0f}, {v.n_points} corners)")
            else:
                lines.append(f"  {v.name}: rejected: {v.reason}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- input
def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files (``IMAGE_SUFFIXES``, any case) directly in ``folder``, sorted by name.

    Raises:
        FileNotFoundError: when the folder does not exist.
        ValueError: when it holds no images.
    """
    root = Path(folder)
    if root.is_file():
        raise ValueError(f"{root} is a file; give a folder of images (or a list of image files)")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return files


def iter_image_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(file name, (H, W, 3) uint8 BGR image)``; an unreadable file raises ValueError naming it."""
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"image {p} does not exist")
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot decode image {p}")
        yield p.name, img


def iter_video_frames(
    path: str | os.PathLike[str], every: int = 15, max_frames: int = 200
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``("frame_000123", (H, W, 3) uint8 BGR)`` for every ``every``-th frame, at most ``max_frames``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when OpenCV cannot open it or it has no frames.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"video {p} does not exist")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open video {p}")
    try:
        index = taken = 0
        while taken < max_frames:
            if index % every == 0:
                ok, frame = cap.read()
                if not ok:
                    break
                taken += 1
                yield f"frame_{index:06d}", frame
            elif not cap.grab():
                break
            index += 1
    finally:
        cap.release()
    if taken == 0:
        raise ValueError(f"video {p} has no readable frames")


# ------------------------------------------------------------------------------------------------ calibration
def calibrate_images(
    paths_or_folder: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], config: CalibrationConfig
) -> CalibrationResult:
    """Calibrate from a folder of images or a list of image files (see :func:`calibrate_views`)."""
    if isinstance(paths_or_folder, (str, os.PathLike)):
        paths = list_images(paths_or_folder)
    else:
        paths = [Path(p) for p in paths_or_folder]
    return calibrate_views(iter_image_files(paths), config)


def calibrate_video(path: str | os.PathLike[str], config: CalibrationConfig) -> CalibrationResult:
    """Calibrate from sampled frames of a video file (see :func:`calibrate_views`)."""
    return calibrate_views(iter_video_frames(path, config.video_every, config.video_max_frames), config)


def calibrate_views(views: Iterable[tuple[str, np.ndarray]], config: CalibrationConfig) -> CalibrationResult:
    """Detect the board in each view, reject unusable views and calibrate.

    Args:
        views: ``(name, (H, W, 3) or (H, W) uint8 image)`` pairs, all of one size.
        config: settings.

    Returns:
        The calibration result.

    Raises:
        ValueError: on mixed image sizes, no views, or fewer than ``config.min_views`` accepted views (the message
            lists each rejected view and its reason).
    """
    detections: list[BoardDetection] = []
    tiles: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    first_name = ""
    for name, image in views:
        h, w = image.shape[:2]
        if size is None:
            size, first_name = (w, h), name
        elif (w, h) != size:
            raise ValueError(
                f"mixed image sizes: {first_name} is {size[0]}x{size[1]} but {name} is {w}x{h}; "
                "calibrate one camera at one resolution"
            )
        det = detect_board(image, config.board, config.detection, name)
        logger.debug("%s: %s", name, "accepted" if det.accepted else det.reason)
        detections.append(det)
        if len(tiles) < _MAX_TILES:
            tiles.append(_tile(image, det, config.board))
    if size is None:
        raise ValueError("no views to calibrate from")
    used = [d for d in detections if d.accepted]
    if len(used) < config.min_views:
        reasons = "; ".join(f"{d.name}: {d.reason}" for d in detections if not d.accepted)
        what = (
            "no calibration board found in any"
            if not used
            else f"only {len(used)} usable views (need {config.min_views}) among"
        )
        raise ValueError(f"{what} of {len(detections)} views ({config.board.describe()}). Rejected: {reasons}")
    obj = [d.object_points for d in used]
    img = [d.image_points for d in used]
    if config.model == "pinhole":
        rms, K, D, residuals = _calibrate_pinhole(obj, img, size)
        new_K, _ = cv2.getOptimalNewCameraMatrix(K, D, size, config.alpha, size)
        dist_model = "plumb_bob"
    else:
        rms, K, D, residuals = _calibrate_fisheye(obj, img, size)
        new_K = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, D, size, np.eye(3), balance=config.alpha)
        dist_model = "equidistant"
    P = np.hstack([np.asarray(new_K, np.float64), np.zeros((3, 1))])
    camera = CameraInfo(size[0], size[1], K, np.asarray(D).ravel(), dist_model, np.eye(3), P, config.camera_name)
    residual_by_name = dict(zip([d.name for d in used], residuals, strict=True))
    reports = tuple(
        ViewReport(
            d.name,
            d.accepted,
            d.reason,
            residual_by_name.get(d.name) if d.accepted else None,
            d.sharpness,
            0 if d.image_points is None else len(d.image_points),
        )
        for d in detections
    )
    logger.info("calibrated %s from %d of %d views: RMS %.4f px", dist_model, len(used), len(detections), rms)
    return CalibrationResult(camera, float(rms), reports, _mosaic(tiles))


def _calibrate_pinhole(
    obj: list[np.ndarray], img: list[np.ndarray], size: tuple[int, int]
) -> tuple[float, np.ndarray, np.ndarray, list[float]]:
    rms, K, D, rvecs, tvecs = cv2.calibrateCamera(obj, img, size, None, None)
    residuals = []
    for o, i, r, t in zip(obj, img, rvecs, tvecs, strict=True):
        proj, _ = cv2.projectPoints(o, r, t, K, D)
        residuals.append(_rms(proj.reshape(-1, 2) - i))
    return float(rms), K, D.ravel()[:5], residuals


def _calibrate_fisheye(
    obj: list[np.ndarray], img: list[np.ndarray], size: tuple[int, int]
) -> tuple[float, np.ndarray, np.ndarray, list[float]]:
    obj64 = [o.reshape(-1, 1, 3).astype(np.float64) for o in obj]
    img64 = [i.reshape(-1, 1, 2).astype(np.float64) for i in img]
    flags = cv2.fisheye.CALIB_RECOMPUTE_EXTRINSIC | cv2.fisheye.CALIB_FIX_SKEW
    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 200, 1e-9)
    try:
        rms, K, D, rvecs, tvecs = cv2.fisheye.calibrate(
            obj64, img64, size, np.eye(3), np.zeros(4), flags=flags, criteria=criteria
        )
    except cv2.error as exc:
        raise ValueError(f"fisheye calibration failed (views too few or too similar?): {exc}") from exc
    residuals = []
    for o, i, r, t in zip(obj64, img64, rvecs, tvecs, strict=True):
        proj, _ = cv2.fisheye.projectPoints(o, r, t, K, D)
        residuals.append(_rms(proj.reshape(-1, 2) - i.reshape(-1, 2)))
    return float(rms), K, D.ravel()[:4], residuals


def _rms(diff: np.ndarray) -> float:
    """Root mean squared point distance of ``(N, 2)`` residuals."""
    return float(np.sqrt(np.mean(np.sum(np.asarray(diff, np.float64) ** 2, axis=1))))


# ------------------------------------------------------------------------------------------------- picture
def _tile(image: np.ndarray, det: BoardDetection, board: BoardSpec) -> np.ndarray:
    """A ``_TILE_WIDTH``-wide BGR thumbnail with the corners drawn and the verdict written on it."""
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    h, w = bgr.shape[:2]
    scale = _TILE_WIDTH / w
    tile = cv2.resize(bgr, (_TILE_WIDTH, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if det.image_points is not None:
        pts = ((det.image_points.astype(np.float64) + 0.5) * scale - 0.5).astype(np.float32).reshape(-1, 1, 2)
        if isinstance(board, ChessboardSpec) and len(pts) == board.n_corners:
            cv2.drawChessboardCorners(tile, (board.cols, board.rows), pts, True)
        else:
            for x, y in pts.reshape(-1, 2):
                cv2.circle(tile, (round(float(x)), round(float(y))), 2, (0, 255, 0), -1, cv2.LINE_AA)
    colour = (0, 200, 0) if det.accepted else (0, 0, 255)
    label = det.name if det.accepted else f"{det.name}: {det.reason}"
    _put_text(tile, label, colour)
    return tile


def _put_text(tile: np.ndarray, text: str, colour: tuple[int, int, int]) -> None:
    """Write ``text`` wrapped over a dark band at the top of ``tile``."""
    width_chars = max(10, tile.shape[1] // 7)
    lines = [text[i : i + width_chars] for i in range(0, len(text), width_chars)][:3]
    band = 14 * len(lines) + 4
    tile[:band] = (tile[:band] * 0.35).astype(np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(tile, line, (3, 13 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)


def _mosaic(tiles: list[np.ndarray]) -> np.ndarray:
    cols = min(len(tiles), 5)
    rows = math.ceil(len(tiles) / cols)
    th = max(t.shape[0] for t in tiles)
    out = np.full((rows * th, cols * _TILE_WIDTH, 3), 40, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * th : r * th + t.shape[0], c * _TILE_WIDTH : (c + 1) * _TILE_WIDTH] = t
    return out


def write_corners_png(path: str | os.PathLike[str], result: CalibrationResult) -> Path:
    """Write the detected-corners mosaic of ``result`` as PNG (atomically)."""
    ok, buf = cv2.imencode(".png", result.corners_picture)
    if not ok:
        raise ValueError(f"cannot encode the corners picture for {path}")
    return atomic_write_bytes(path, buf.tobytes())
