"""Camera intrinsics as a validated, immutable ``CameraInfo`` and its ROS camera_info YAML form.

The YAML layout is the one ROS ``camera_calibration_parsers`` reads and writes (``parse_yml.cpp``)::

    image_width: 640
    image_height: 480
    camera_name: left
    camera_matrix: {rows: 3, cols: 3, data: [fx, 0, cx, 0, fy, cy, 0, 0, 1]}
    distortion_model: plumb_bob            # or equidistant (OpenCV cv2.fisheye, Kannala-Brandt k1..k4)
    distortion_coefficients: {rows: 1, cols: 5, data: [k1, k2, p1, p2, k3]}
    rectification_matrix: {rows: 3, cols: 3, data: [...]}
    projection_matrix: {rows: 3, cols: 4, data: [...]}

All four matrices are required when reading (no defaults are invented). ``K[0] == 0`` marks an uncalibrated camera in
``sensor_msgs/CameraInfo`` and is rejected here. OpenCV ``FileStorage`` YAML (``%YAML:1.0`` with ``!!opencv-matrix``
tags) is a different format; read it with ``cv2.FileStorage``.

Pixel convention (OpenCV's, as everywhere in this project): pixel ``(x, y)`` has its centre at integer ``(x, y)``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from calibration.io import atomic_write_text

#: Supported ROS distortion models and their number of coefficients.
DISTORTION_MODELS: dict[str, int] = {"plumb_bob": 5, "equidistant": 4}

_ASPECT_TOLERANCE_PX = 1.0


def _frozen_array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Copy ``value`` to a read-only float64 array of ``shape``; raise a ValueError naming ``name`` otherwise."""
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"CameraInfo.{name} is not numeric: {exc}") from exc
    if arr.size != math.prod(shape):
        raise ValueError(f"CameraInfo.{name} must have shape {shape}, got {arr.shape}")
    arr = arr.reshape(shape)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"CameraInfo.{name} contains non-finite values: {arr.tolist()}")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class CameraInfo:
    """Intrinsics of one camera at one image size (ROS ``sensor_msgs/CameraInfo`` semantics).

    Attributes:
        width: image width in pixels (> 0).
        height: image height in pixels (> 0).
        K: ``(3, 3)`` float64 camera matrix ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``; ``fx, fy > 0``.
        D: ``(n,)`` float64 distortion coefficients: 5 for ``plumb_bob`` (k1, k2, p1, p2, k3), 4 for ``equidistant``
            (k1..k4 of OpenCV's fisheye model).
        distortion_model: ``"plumb_bob"`` or ``"equidistant"``.
        R: ``(3, 3)`` float64 rectification rotation; ``None`` means identity (monocular camera).
        P: ``(3, 4)`` float64 projection matrix of the rectified image; ``None`` means ``[K | 0]``.
        camera_name: free text without line breaks.

    Arrays are stored as read-only float64 copies; equality and hashing compare all values exactly.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    distortion_model: str = "plumb_bob"
    R: np.ndarray | None = None
    P: np.ndarray | None = None
    camera_name: str = "camera"
    _key: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"CameraInfo.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.distortion_model not in DISTORTION_MODELS:
            raise ValueError(
                f"CameraInfo.distortion_model {self.distortion_model!r} is not supported; "
                f"use one of {sorted(DISTORTION_MODELS)}"
            )
        K = _frozen_array(self.K, (3, 3), "K")
        if K[0, 0] == 0.0:
            raise ValueError("CameraInfo.K[0] (fx) is 0: sensor_msgs/CameraInfo marks this an uncalibrated camera")
        if K[0, 0] < 0 or K[1, 1] <= 0:
            raise ValueError(f"CameraInfo.K focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
        if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
            raise ValueError(f"CameraInfo.K must be upper triangular with K[2][2] == 1, got {K.tolist()}")
        n_coeffs = DISTORTION_MODELS[self.distortion_model]
        D = np.array(self.D, dtype=np.float64).ravel()
        if D.size != n_coeffs:
            raise ValueError(
                f"CameraInfo.D must have {n_coeffs} coefficients for {self.distortion_model}, got {D.size}"
            )
        D = _frozen_array(D, (n_coeffs,), "D")
        R = _frozen_array(np.eye(3) if self.R is None else self.R, (3, 3), "R")
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or not np.isclose(np.linalg.det(R), 1.0, atol=1e-6):
            raise ValueError(f"CameraInfo.R must be a rotation matrix, got {R.tolist()}")
        P = _frozen_array(np.hstack([K, np.zeros((3, 1))]) if self.P is None else self.P, (3, 4), "P")
        if P[0, 0] <= 0 or P[1, 1] <= 0 or P[2, 2] != 1:
            raise ValueError(f"CameraInfo.P must have positive focal lengths and P[2][2] == 1, got {P.tolist()}")
        if not isinstance(self.camera_name, str) or not self.camera_name.strip():
            raise ValueError(f"CameraInfo.camera_name must be a non-empty string, got {self.camera_name!r}")
        if any(ord(ch) < 32 for ch in self.camera_name):
            raise ValueError(f"CameraInfo.camera_name must not contain control characters: {self.camera_name!r}")
        for name, value in (("K", K), ("D", D), ("R", R), ("P", P)):
            object.__setattr__(self, name, value)
        key = (
            self.width,
            self.height,
            self.distortion_model,
            self.camera_name,
            K.tobytes(),
            D.tobytes(),
            R.tobytes(),
            P.tobytes(),
        )
        object.__setattr__(self, "_key", key)

    # ----------------------------------------------------------------------------------------------- identity
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CameraInfo):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    # ------------------------------------------------------------------------------------------- accessors
    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.width, self.height

    @property
    def fx(self) -> float:
        """Focal length along x in pixels."""
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        """Focal length along y in pixels."""
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        """Principal point x in pixels (OpenCV convention)."""
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        """Principal point y in pixels (OpenCV convention)."""
        return float(self.K[1, 2])

    @property
    def is_fisheye(self) -> bool:
        """True for the ``equidistant`` (OpenCV fisheye) model."""
        return self.distortion_model == "equidistant"

    # ------------------------------------------------------------------------------------ transformations
    def scaled(self, width: int, height: int, *, allow_anisotropic: bool = False) -> CameraInfo:
        """Intrinsics of the same camera after the whole image was resized to ``width x height``.

        With ``sx = width / self.width`` and ``sy = height / self.height``: ``fx' = sx fx``, ``fy' = sy fy`` and, since
        a resize maps pixel-centre coordinates as ``x' = (x + 0.5) sx - 0.5``, ``cx' = (cx + 0.5) sx - 0.5`` (same for
        y). ROS ``image_proc/resize`` uses ``cx' = sx cx``; the two differ by less than half a pixel. ``P`` is scaled
        the same way; ``D`` and ``R`` are unchanged (distortion acts on normalised coordinates).

        Args:
            width: new image width in pixels.
            height: new image height in pixels.
            allow_anisotropic: accept a change of aspect ratio (a stretch). Without it a change of more than the one
                pixel that rounding explains raises, because a crop would need different intrinsics.

        Returns:
            A new ``CameraInfo``.

        Raises:
            ValueError: on non-positive sizes or an unexpected change of aspect ratio.
        """
        if width <= 0 or height <= 0:
            raise ValueError(f"cannot scale camera intrinsics to {width}x{height}")
        if not allow_anisotropic and not same_aspect(self.size, (width, height)):
            raise ValueError(
                f"resizing {self.width}x{self.height} to {width}x{height} changes the aspect ratio "
                f"({self.width / self.height:.4f} -> {width / height:.4f}); that is a crop or a stretch. "
                "Use cropped() for a crop, or allow_anisotropic=True if the image was stretched"
            )
        sx = width / self.width
        sy = height / self.height
        return self._affine(sx, sy, 0.5 * sx - 0.5, 0.5 * sy - 0.5, width, height)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> CameraInfo:
        """Intrinsics of the sub-image ``[x0, x0 + width) x [y0, y0 + height)`` (pixels of this image).

        The principal point shifts by ``(-x0, -y0)``; focal lengths are unchanged.

        Raises:
            ValueError: when the window is empty or not inside the image.
        """
        if width <= 0 or height <= 0 or x0 < 0 or y0 < 0 or x0 + width > self.width or y0 + height > self.height:
            raise ValueError(
                f"crop window x0={x0} y0={y0} {width}x{height} is not inside the {self.width}x{self.height} image"
            )
        return self._affine(1.0, 1.0, -float(x0), -float(y0), width, height)

    def _affine(self, sx: float, sy: float, ox: float, oy: float, width: int, height: int) -> CameraInfo:
        """Apply pixel map ``x' = sx x + ox``, ``y' = sy y + oy`` to K and P (P's 4th column scales with f)."""
        A = np.array([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]])
        return CameraInfo(
            width=int(width),
            height=int(height),
            K=A @ self.K,
            D=self.D,
            distortion_model=self.distortion_model,
            R=self.R,
            P=A @ self.P,
            camera_name=self.camera_name,
        )

    # ------------------------------------------------------------------------------------------------ YAML
    def to_ros_dict(self) -> dict[str, Any]:
        """The ROS camera_info mapping (plain Python types)."""

        def mat(arr: np.ndarray, rows: int, cols: int) -> dict[str, Any]:
            return {"rows": rows, "cols": cols, "data": [float(v) for v in arr.ravel()]}

        return {
            "image_width": self.width,
            "image_height": self.height,
            "camera_name": self.camera_name,
            "camera_matrix": mat(self.K, 3, 3),
            "distortion_model": self.distortion_model,
            "distortion_coefficients": mat(self.D, 1, self.D.size),
            "rectification_matrix": mat(self.R, 3, 3),
            "projection_matrix": mat(self.P, 3, 4),
        }

    def to_yaml(self) -> str:
        """ROS camera_info YAML text; floats are written with full (round-trip) precision."""
        d = self.to_ros_dict()
        lines = [
            f"image_width: {d['image_width']}",
            f"image_height: {d['image_height']}",
            f"camera_name: {json.dumps(d['camera_name'])}",
        ]
        for key in ("camera_matrix", "distortion_model", "distortion_coefficients"):
            lines.extend(_yaml_entry(key, d[key]))
        lines.extend(_yaml_entry("rectification_matrix", d["rectification_matrix"]))
        lines.extend(_yaml_entry("projection_matrix", d["projection_matrix"]))
        return "\n".join(lines) + "\n"

    @classmethod
    def from_ros_dict(cls, data: Any, source: str = "<dict>") -> CameraInfo:
        """Build from a ROS camera_info mapping (as ``yaml.safe_load`` returns it).

        Args:
            data: the mapping.
            source: a name for error messages (usually the file path).

        Raises:
            ValueError: naming ``source`` and the offending key when anything is missing or malformed.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source}: camera_info YAML must be a mapping, got {type(data).__name__}")
        required = (
            "image_width",
            "image_height",
            "camera_matrix",
            "distortion_model",
            "distortion_coefficients",
            "rectification_matrix",
            "projection_matrix",
        )
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{source}: camera_info YAML lacks key(s) {missing}")
        model = data["distortion_model"]
        n_coeffs = DISTORTION_MODELS.get(model) if isinstance(model, str) else None
        if n_coeffs is None:
            raise ValueError(
                f"{source}: distortion_model {model!r} is not supported; use one of {sorted(DISTORTION_MODELS)}"
            )
        try:
            return cls(
                width=_yaml_int(data["image_width"], "image_width", source),
                height=_yaml_int(data["image_height"], "image_height", source),
                K=_yaml_matrix(data["camera_matrix"], "camera_matrix", 3, 3, source),
                D=_yaml_matrix(data["distortion_coefficients"], "distortion_coefficients", 1, n_coeffs, source),
                distortion_model=model,
                R=_yaml_matrix(data["rectification_matrix"], "rectification_matrix", 3, 3, source),
                P=_yaml_matrix(data["projection_matrix"], "projection_matrix", 3, 4, source),
                camera_name=str(data.get("camera_name", "camera")),
            )
        except ValueError as exc:
            if str(exc).startswith(source):
                raise
            raise ValueError(f"{source}: {exc}") from exc


def same_aspect(size_a: tuple[int, int], size_b: tuple[int, int], tolerance_px: float = _ASPECT_TOLERANCE_PX) -> bool:
    """True when ``size_b`` is a uniform resize of ``size_a`` up to rounding of one side to whole pixels.

    Compares ``wb`` with ``wa * hb / ha`` and ``hb`` with ``ha * wb / wa``: uniform when either differs by at most
    ``tolerance_px``.
    """
    (wa, ha), (wb, hb) = size_a, size_b
    return abs(wb - wa * hb / ha) <= tolerance_px or abs(hb - ha * wb / wa) <= tolerance_px


def _format_float(value: float) -> str:
    """Round-trip float text that YAML 1.1 (PyYAML) reads as a float: '1e-05' needs a dot to be one."""
    text = repr(float(value))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _yaml_entry(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [f"{key}: {value}"]
    data = ", ".join(_format_float(v) for v in value["data"])
    return [f"{key}:", f"  rows: {value['rows']}", f"  cols: {value['cols']}", f"  data: [{data}]"]


def _yaml_int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{source}: {key} must be an integer, got {value!r}")
    return value


def _yaml_matrix(value: Any, key: str, rows: int, cols: int, source: str) -> np.ndarray:
    if not isinstance(value, dict) or "data" not in value:
        raise ValueError(f"{source}: {key} must be a mapping with rows, cols and data, got {value!r}")
    if value.get("rows") != rows or value.get("cols") != cols:
        raise ValueError(
            f"{source}: {key} must be {rows}x{cols}, got rows={value.get('rows')} cols={value.get('cols')}"
        )
    data = value["data"]
    if not isinstance(data, list) or len(data) != rows * cols:
        raise ValueError(f"{source}: {key}.data must be a list of {rows * cols} numbers, got {data!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
        raise ValueError(f"{source}: {key}.data must contain numbers only, got {data!r}")
    return np.array(data, dtype=np.float64).reshape(rows, cols)


def read_camera_info(path: str | os.PathLike[str]) -> CameraInfo:
    """Read a ROS camera_info YAML file (``yaml.safe_load``).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not valid camera_info YAML (the message names the file and key).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"camera_info file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not a UTF-8 text file ({exc})") from exc
    if text.lstrip().startswith("%YAML:1.0") or "!!opencv-matrix" in text:
        raise ValueError(
            f"{p}: this is an OpenCV FileStorage YAML (!!opencv-matrix), not ROS camera_info; "
            "read it with cv2.FileStorage"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from exc
    return CameraInfo.from_ros_dict(data, source=str(p))


def write_camera_info(path: str | os.PathLike[str], camera: CameraInfo) -> Path:
    """Write ``camera`` as ROS camera_info YAML, atomically (temp file in the same folder, then rename).

    Returns:
        The written path.
    """
    text = camera.to_yaml()
    # Guard against a writer bug before the file replaces a good one.
    CameraInfo.from_ros_dict(yaml.safe_load(text), source=f"{path} (about to be written)")
    return atomic_write_text(path, text)
