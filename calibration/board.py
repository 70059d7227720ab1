"""Calibration boards (chessboard, ChArUco): parsing a board spec and detecting it in one image.

Board specs (``--board`` on the command line):

* ``chessboard:COLSxROWS:SQUARE_MM``: COLS x ROWS *inner* corners (OpenCV's ``patternSize``), e.g.
  ``chessboard:9x6:25``.
* ``charuco:COLSxROWS:SQUARE_MM:MARKER_MM[:DICT[:legacy]]``: COLS x ROWS *squares* (OpenCV ``CharucoBoard`` size),
  marker side ``MARKER_MM``, ArUco dictionary name (default ``DICT_5X5_100``); ``legacy`` selects the pre-4.6 OpenCV
  layout of boards with an even number of rows.

Object points are in metres on the board plane ``z = 0``. Image points use OpenCV's pixel convention (pixel centre at
integer coordinates). A detection is rejected, with a reason, when the board is absent or only partly visible, touches
the image border, or is blurred: the variance of the Laplacian over the board region (resampled so that one square is
about ``sharpness_square_px`` pixels, which makes the number comparable across resolutions) is below
``blur_threshold``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)

_SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 40, 1e-3)
_DETECT_MAX_SIDE = 1600  # chessboard search runs on a copy at most this large; corners are refined at full size


@dataclass(frozen=True)
class ChessboardSpec:
    """A classic chessboard.

    Attributes:
        cols: inner corners per row (OpenCV ``patternSize.width``), >= 2.
        rows: inner corners per column, >= 2.
        square_mm: side of one square in millimetres, > 0.
    """

    cols: int
    rows: int
    square_mm: float

    def __post_init__(self) -> None:
        if self.cols < 2 or self.rows < 2:
            raise ValueError(f"chessboard needs at least 2x2 inner corners, got {self.cols}x{self.rows}")
        if not self.square_mm > 0:
            raise ValueError(f"chessboard square size must be > 0 mm, got {self.square_mm}")

    @property
    def n_corners(self) -> int:
        """Number of inner corners."""
        return self.cols * self.rows

    def describe(self) -> str:
        """Short human-readable description."""
        return f"{self.cols}x{self.rows} chessboard ({self.square_mm:g} mm squares)"

    def object_points(self) -> np.ndarray:
        """``(cols * rows, 3)`` float32 corner positions in metres, row-major in OpenCV's corner order."""
        grid = np.mgrid[0 : self.cols, 0 : self.rows].T.reshape(-1, 2)
        pts = np.zeros((self.n_corners, 3), np.float32)
        pts[:, :2] = grid * (self.square_mm / 1000.0)
        return pts


@dataclass(frozen=True)
class CharucoSpec:
    """A ChArUco board (OpenCV >= 4.7 ``cv2.aruco.CharucoBoard``).

    Attributes:
        cols: squares along x, >= 3.
        rows: squares along y, >= 3.
        square_mm: square side in millimetres.
        marker_mm: ArUco marker side in millimetres, smaller than ``square_mm``.
        dictionary: name of a predefined ArUco dictionary, e.g. ``DICT_5X5_100``.
        legacy: use the pre-OpenCV-4.6 layout (matters for an even number of rows).
    """

    cols: int
    rows: int
    square_mm: float
    marker_mm: float
    dictionary: str = "DICT_5X5_100"
    legacy: bool = False

    def __post_init__(self) -> None:
        if self.cols < 3 or self.rows < 3:
            raise ValueError(f"ChArUco board needs at least 3x3 squares, got {self.cols}x{self.rows}")
        if not 0 < self.marker_mm < self.square_mm:
            raise ValueError(
                f"ChArUco marker side must be > 0 and smaller than the square: {self.marker_mm} vs {self.square_mm} mm"
            )
        require_aruco()
        if not isinstance(getattr(cv2.aruco, self.dictionary, None), int):
            raise ValueError(f"unknown ArUco dictionary {self.dictionary!r} (e.g. DICT_4X4_50, DICT_5X5_100)")
        n_markers = (self.cols * self.rows) // 2
        dict_size = int(self.dictionary.rsplit("_", 1)[-1]) if self.dictionary.rsplit("_", 1)[-1].isdigit() else None
        if dict_size is not None and n_markers > dict_size:
            raise ValueError(
                f"{self.dictionary} has {dict_size} markers but a {self.cols}x{self.rows} board needs {n_markers}"
            )

    @property
    def n_corners(self) -> int:
        """Number of inner (ChArUco) corners."""
        return (self.cols - 1) * (self.rows - 1)

    def describe(self) -> str:
        """Short human-readable description."""
        return (
            f"{self.cols}x{self.rows} ChArUco board ({self.square_mm:g} mm squares, {self.marker_mm:g} mm markers, "
            f"{self.dictionary}{', legacy' if self.legacy else ''})"
        )

    def make_board(self) -> cv2.aruco.CharucoBoard:
        """The OpenCV board object (lengths in metres)."""
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        board = cv2.aruco.CharucoBoard(
            (self.cols, self.rows), self.square_mm / 1000.0, self.marker_mm / 1000.0, dictionary
        )
        board.setLegacyPattern(self.legacy)
        return board


BoardSpec = ChessboardSpec | CharucoSpec


def require_aruco() -> None:
    """Raise a clear RuntimeError when this OpenCV build cannot detect ChArUco boards."""
    aruco = getattr(cv2, "aruco", None)
    if aruco is None or not hasattr(aruco, "CharucoDetector"):
        raise RuntimeError(
            f"this OpenCV build ({cv2.__version__}) has no cv2.aruco.CharucoDetector, so ChArUco boards cannot be "
            "detected; install OpenCV >= 4.7 (opencv-python-headless) or use a chessboard"
        )


def parse_board(spec: str) -> BoardSpec:
    """Parse a board spec string (see the module docstring).

    Raises:
        ValueError: naming the spec and what is wrong with it.
    """
    parts = spec.strip().split(":")
    kind = parts[0].lower()
    try:
        if kind == "chessboard" and len(parts) == 3:
            cols, rows = _parse_dims(parts[1])
            return ChessboardSpec(cols, rows, float(parts[2]))
        if kind == "charuco" and 4 <= len(parts) <= 6:
            cols, rows = _parse_dims(parts[1])
            dictionary = parts[4] if len(parts) >= 5 else "DICT_5X5_100"
            legacy = len(parts) == 6
            if legacy and parts[5].lower() != "legacy":
                raise ValueError(f"the 6th field may only be 'legacy', got {parts[5]!r}")
            return CharucoSpec(cols, rows, float(parts[2]), float(parts[3]), dictionary.upper(), legacy)
    except ValueError as exc:
        raise ValueError(f"bad board spec {spec!r}: {exc}") from exc
    raise ValueError(
        f"bad board spec {spec!r}: use chessboard:COLSxROWS:SQUARE_MM (inner corners, e.g. chessboard:9x6:25) or "
        "charuco:COLSxROWS:SQUARE_MM:MARKER_MM[:DICT[:legacy]] (squares)"
    )


def _parse_dims(text: str) -> tuple[int, int]:
    pieces = text.lower().split("x")
    if len(pieces) != 2 or not all(p.isdigit() for p in pieces):
        raise ValueError(f"board size must be COLSxROWS, got {text!r}")
    return int(pieces[0]), int(pieces[1])


@dataclass(frozen=True)
class DetectionConfig:
    """Acceptance rules for one board view.

    Attributes:
        blur_threshold: minimum variance of the Laplacian over the board region (after resampling so one square is
            about ``sharpness_square_px`` pixels); below it the view is rejected as blurred. On OpenCV's 640x480
            chessboard samples sharp views score 300-1000 and a Gaussian blur of sigma 2 px brings them to 25-80.
        sharpness_square_px: nominal square size, in pixels, used to make the sharpness comparable across resolutions
            (views whose squares are smaller are not upsampled).
        border_margin_px: reject a view whose corners come closer than this to the image edge (partly outside).
        min_charuco_fraction: a ChArUco view needs at least this fraction of the board's corners (else: partial).
        min_charuco_corners: and at least this many corners.
    """

    blur_threshold: float = 100.0
    sharpness_square_px: float = 30.0
    border_margin_px: float = 2.0
    min_charuco_fraction: float = 0.5
    min_charuco_corners: int = 6

    def __post_init__(self) -> None:
        if self.blur_threshold < 0:
            raise ValueError(f"blur_threshold must be >= 0, got {self.blur_threshold}")
        if self.sharpness_square_px <= 2:
            raise ValueError(f"sharpness_square_px must be > 2, got {self.sharpness_square_px}")
        if self.border_margin_px < 0:
            raise ValueError(f"border_margin_px must be >= 0, got {self.border_margin_px}")
        if not 0 < self.min_charuco_fraction <= 1:
            raise ValueError(f"min_charuco_fraction must be in (0, 1], got {self.min_charuco_fraction}")
        if self.min_charuco_corners < 4:
            raise ValueError(f"min_charuco_corners must be >= 4, got {self.min_charuco_corners}")


@dataclass(frozen=True)
class BoardDetection:
    """The outcome for one view.

    Attributes:
        name: image file name or video frame label.
        image_size: ``(width, height)`` of the view.
        accepted: whether the view is used for calibration.
        reason: why it was rejected ("" when accepted).
        image_points: ``(N, 2)`` float32 refined corners in pixels, or None when no board was found.
        object_points: ``(N, 3)`` float32 matching board points in metres, or None.
        sharpness: variance of the Laplacian over the board region, or None when no board was found.
    """

    name: str
    image_size: tuple[int, int]
    accepted: bool
    reason: str
    image_points: np.ndarray | None = None
    object_points: np.ndarray | None = None
    sharpness: float | None = None


def board_sharpness(gray: np.ndarray, image_points: np.ndarray, square_px_target: float = 30.0) -> float:
    """Variance of the Laplacian over the board region, resampled to about ``square_px_target`` px per square.

    Args:
        gray: ``(H, W)`` uint8 image.
        image_points: ``(N, 2)`` detected corners in pixels (N >= 2).
        square_px_target: nominal square size after resampling (only downsampling is applied).

    Returns:
        The variance (float, >= 0).
    """
    pts = np.asarray(image_points, dtype=np.float64).reshape(-1, 2)
    spacing = corner_spacing(pts)
    h, w = gray.shape[:2]
    pad = 0.5 * spacing
    x0, y0 = np.maximum(np.floor(pts.min(axis=0) - pad), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(pts.max(axis=0) + pad), [w - 1, h - 1]).astype(int)
    roi = gray[y0 : y1 + 1, x0 : x1 + 1]
    scale = min(1.0, square_px_target / spacing) if spacing > 0 else 1.0
    if scale < 1.0:
        roi = cv2.resize(roi, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(roi, cv2.CV_64F).var())


def corner_spacing(points: np.ndarray) -> float:
    """Median nearest-neighbour distance of ``(N, 2)`` corner points (about one square side), in pixels."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 2:
        return 0.0
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return float(np.median(np.sqrt(d2.min(axis=1))))


def detect_board(
    image: np.ndarray, spec: BoardSpec, config: DetectionConfig | None = None, name: str = "image"
) -> BoardDetection:
    """Detect ``spec`` in one view, refine its corners to sub-pixel accuracy and decide whether to use it.

    Args:
        image: ``(H, W)`` uint8 grayscale or ``(H, W, 3)`` uint8 BGR image.
        spec: the board.
        config: acceptance rules (defaults when None).
        name: label for reports.

    Returns:
        A ``BoardDetection``; rejected views carry a reason.
    """
    cfg = config or DetectionConfig()
    gray = _to_gray(image, name)
    h, w = gray.shape
    if isinstance(spec, ChessboardSpec):
        found = _detect_chessboard(gray, spec)
        if found is None:
            return BoardDetection(
                name,
                (w, h),
                False,
                f"no complete {spec.cols}x{spec.rows} chessboard found (absent, partial or blurred)",
            )
        img_pts, obj_pts = found, spec.object_points()
    else:
        found_c = _detect_charuco(gray, spec)
        if isinstance(found_c, str):
            return BoardDetection(name, (w, h), False, found_c)
        img_pts, obj_pts, collinear = found_c
        need = max(cfg.min_charuco_corners, int(np.ceil(cfg.min_charuco_fraction * spec.n_corners)))
        if len(img_pts) < need:
            return BoardDetection(
                name,
                (w, h),
                False,
                f"partial board: {len(img_pts)} of {spec.n_corners} corners (need {need})",
                img_pts,
                obj_pts,
            )
        if collinear:
            return BoardDetection(name, (w, h), False, "ChArUco corners are collinear", img_pts, obj_pts)
    margin = cfg.border_margin_px
    if (
        np.any(img_pts[:, 0] < margin)
        or np.any(img_pts[:, 1] < margin)
        or np.any(img_pts[:, 0] > w - 1 - margin)
        or np.any(img_pts[:, 1] > h - 1 - margin)
    ):
        return BoardDetection(name, (w, h), False, "board touches the image border (partial view)", img_pts, obj_pts)
    sharp = board_sharpness(gray, img_pts, cfg.sharpness_square_px)
    if sharp < cfg.blur_threshold:
        return BoardDetection(
            name,
            (w, h),
            False,
            f"blurred: variance of Laplacian {sharp:.1f} < threshold {cfg.blur_threshold:g}",
            img_pts,
            obj_pts,
            sharp,
        )
    return BoardDetection(name, (w, h), True, "", img_pts, obj_pts, sharp)


def _to_gray(image: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 image, got {arr.dtype}")
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[:, :, 0]
    raise ValueError(f"{name}: expected an (H, W) or (H, W, 3) image, got shape {arr.shape}")


def _detect_chessboard(gray: np.ndarray, spec: ChessboardSpec) -> np.ndarray | None:
    """``(N, 2)`` float32 refined corners or None."""
    h, w = gray.shape
    scale = min(1.0, _DETECT_MAX_SIDE / max(h, w))
    small = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK
    ok, corners = cv2.findChessboardCorners(small, (spec.cols, spec.rows), flags=flags)
    if not ok or corners is None:
        return None
    corners = corners.reshape(-1, 2).astype(np.float64)
    if scale != 1.0:
        corners = (corners + 0.5) / scale - 0.5
    half = int(np.clip(np.floor(0.3 * corner_spacing(corners)), 2, 11))
    refined = cv2.cornerSubPix(
        gray, corners.astype(np.float32).reshape(-1, 1, 2), (half, half), (-1, -1), _SUBPIX_CRITERIA
    )
    return refined.reshape(-1, 2).astype(np.float32)


def _detect_charuco(gray: np.ndarray, spec: CharucoSpec) -> tuple[np.ndarray, np.ndarray, bool] | str:
    """``(image_points (N, 2) float32, object_points (N, 3) float32, collinear)`` or a rejection reason."""
    board = spec.make_board()
    detector = cv2.aruco.CharucoDetector(board)
    corners, ids, _marker_corners, marker_ids = detector.detectBoard(gray)
    if ids is None or len(ids) == 0:
        n_markers = 0 if marker_ids is None else len(marker_ids)
        return f"no ChArUco corners found ({n_markers} markers seen)"
    # CharucoDetector before OpenCV 4.13 returns corners offset by about +0.5 px (opencv/opencv#25539, fixed by
    # PR #28380). cornerSubPix converges to the saddle point from any start inside its window, so refining its output
    # again removes the bias on old versions and changes nothing on fixed ones. The window must stay inside the white
    # gap between a corner and the neighbouring markers.
    pts = corners.reshape(-1, 2).astype(np.float32)
    gap = corner_spacing(pts) * (spec.square_mm - spec.marker_mm) / (2.0 * spec.square_mm)
    half = int(np.clip(np.floor(0.8 * gap), 2, 11))
    pts = cv2.cornerSubPix(gray, pts.reshape(-1, 1, 2), (half, half), (-1, -1), _SUBPIX_CRITERIA)
    obj, img = board.matchImagePoints(pts, ids)
    collinear = len(ids) < 3 or bool(board.checkCharucoCornersCollinear(ids))
    return img.reshape(-1, 2).astype(np.float32), obj.reshape(-1, 3).astype(np.float32), collinear
