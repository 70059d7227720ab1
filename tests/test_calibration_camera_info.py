"""CameraInfo validation, ROS camera_info YAML round trip and intrinsics scaling for resized or cropped images."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from calibration.camera_info import CameraInfo, read_camera_info, same_aspect, write_camera_info

CALIB_DIR = Path(__file__).parent / "data" / "calibration"


def _published_camera() -> CameraInfo:
    """The intrinsics OpenCV published with its chessboard samples (read with cv2.FileStorage)."""
    fs = cv2.FileStorage(str(CALIB_DIR / "left_intrinsics.yml"), cv2.FILE_STORAGE_READ)
    try:
        K = fs.getNode("camera_matrix").mat()
        D = fs.getNode("distortion_coefficients").mat().ravel()
        w = int(fs.getNode("image_width").real())
        h = int(fs.getNode("image_height").real())
    finally:
        fs.release()
    return CameraInfo(w, h, K, D, camera_name="opencv_left")


def _project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    x = X @ K.T
    return x[:, :2] / x[:, 2:3]


def test_yaml_round_trip_is_exact(tmp_path):
    cam = _published_camera()
    # Awkward floats: an exponent without a dot (PyYAML reads "1e-05" as a string) and a negative zero.
    D = np.array(cam.D)
    D[3] = 1e-05
    D[2] = -0.0
    cam = CameraInfo(cam.width, cam.height, cam.K, D, "plumb_bob", None, None, "left: cam #1")
    path = write_camera_info(tmp_path / "camera.yaml", cam)
    back = read_camera_info(path)
    assert back == cam
    assert hash(back) == hash(cam)
    np.testing.assert_array_equal(back.P, np.hstack([cam.K, np.zeros((3, 1))]))
    raw = yaml.safe_load(path.read_text())
    assert raw["camera_matrix"] == {"rows": 3, "cols": 3, "data": cam.K.ravel().tolist()}
    assert raw["distortion_coefficients"]["cols"] == 5
    assert raw["distortion_model"] == "plumb_bob"
    assert raw["camera_name"] == "left: cam #1"


def test_yaml_round_trip_fisheye(tmp_path):
    K = np.array([[300.5, 0.0, 319.25], [0.0, 301.0, 241.75], [0.0, 0.0, 1.0]])
    cam = CameraInfo(640, 480, K, [0.1, -0.02, 0.003, -0.0004], "equidistant", camera_name="fish")
    back = read_camera_info(write_camera_info(tmp_path / "fish.yaml", cam))
    assert back == cam and back.is_fisheye and back.D.shape == (4,)


def test_atomic_write_replaces_file_and_leaves_no_temp(tmp_path):
    cam = _published_camera()
    path = tmp_path / "camera.yaml"
    path.write_text("old content\n")
    write_camera_info(path, cam)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera.yaml"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert read_camera_info(path) == cam
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_camera_info(tmp_path / "missing_dir" / "camera.yaml", cam)


def _write_yaml(tmp_path: Path, mutate) -> Path:
    data = _published_camera().to_ros_dict()
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_with_k0_zero_is_rejected_as_uncalibrated(tmp_path):
    path = _write_yaml(tmp_path, lambda d: d["camera_matrix"]["data"].__setitem__(0, 0.0))
    with pytest.raises(ValueError, match=r"uncalibrated") as info:
        read_camera_info(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("projection_matrix"), "projection_matrix"),
        (lambda d: d.__setitem__("distortion_model", "rational_polynomial"), "rational_polynomial"),
        (lambda d: d["distortion_coefficients"].__setitem__("data", [0.1, 0.2, 0.0, 0.0]), "distortion_coefficients"),
        (lambda d: d["camera_matrix"].__setitem__("rows", 4), "camera_matrix must be 3x3"),
        (lambda d: d.__setitem__("image_width", "640"), "image_width must be an integer"),
        (lambda d: d["rectification_matrix"]["data"].__setitem__(0, 2.0), "rotation matrix"),
        (lambda d: d["camera_matrix"]["data"].__setitem__(3, 5.0), "upper triangular"),
    ],
)
def test_malformed_yaml_names_the_problem(tmp_path, mutate, message):
    path = _write_yaml(tmp_path, mutate)
    with pytest.raises(ValueError, match=message) as info:
        read_camera_info(path)
    assert str(path) in str(info.value)


def test_missing_file_and_opencv_yaml_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        read_camera_info(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match=r"cv2\.FileStorage"):
        read_camera_info(CALIB_DIR / "left_intrinsics.yml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        read_camera_info(tmp_path / "list.yaml")


def test_arrays_are_immutable_and_validated():
    cam = _published_camera()
    with pytest.raises(ValueError, match="read-only"):
        cam.K[0, 0] = 1.0
    with pytest.raises(ValueError, match="positive integer"):
        CameraInfo(0, 480, cam.K, cam.D)
    with pytest.raises(ValueError, match="shape"):
        CameraInfo(640, 480, cam.K[:2], cam.D)
    with pytest.raises(ValueError, match="non-finite"):
        CameraInfo(640, 480, cam.K * np.array([[1, 1, np.nan], [1, 1, 1], [1, 1, 1]]), cam.D)


def test_scaled_matches_pixel_centre_resize_mapping():
    """A point's pixel in the resized image must be (x + 0.5) * s - 0.5 of its pixel in the original."""
    cam = _published_camera()
    half = cam.scaled(320, 240)
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 20), rng.uniform(2, 5, 20)])
    p0 = _project(cam.K, X)
    p1 = _project(half.K, X)
    np.testing.assert_allclose(p1, (p0 + 0.5) * 0.5 - 0.5, atol=1e-9)
    np.testing.assert_allclose(half.P[:, :3], half.K, atol=1e-12)
    np.testing.assert_array_equal(half.D, cam.D)
    back = half.scaled(640, 480)
    np.testing.assert_allclose(back.K, cam.K, atol=1e-9)
    # Rounding one side to whole pixels is still a uniform resize.
    assert same_aspect((4000, 2250), (1000, 562)) and same_aspect((4000, 2250), (1000, 563))
    assert not same_aspect((5472, 3078), (1058, 997))


def test_scaled_refuses_aspect_change_unless_allowed():
    cam = _published_camera()
    with pytest.raises(ValueError, match="aspect ratio"):
        cam.scaled(640, 240)
    stretched = cam.scaled(640, 240, allow_anisotropic=True)
    assert stretched.fx == pytest.approx(cam.fx) and stretched.fy == pytest.approx(cam.fy / 2)


def test_cropped_shifts_principal_point_only():
    cam = _published_camera()
    crop = cam.cropped(100, 50, 400, 300)
    assert crop.size == (400, 300)
    assert crop.fx == cam.fx and crop.fy == cam.fy
    assert crop.cx == pytest.approx(cam.cx - 100) and crop.cy == pytest.approx(cam.cy - 50)
    with pytest.raises(ValueError, match="not inside"):
        cam.cropped(300, 0, 400, 300)


def test_calibration_package_never_imports_torch():
    """``calibration`` is a torch-free leaf used by the onboard runtime."""
    import subprocess
    import sys

    code = (
        "import sys; import calibration, calibration.board, calibration.calibrate, calibration.cli, "
        "calibration.exif, calibration.geometry; print('torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
