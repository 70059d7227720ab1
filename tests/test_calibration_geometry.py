"""Attitude conventions, image <-> ground projection, 6-DoF pose from ground points, GSD and undistortion maps.

Cameras: OpenCV's published intrinsics of the real chessboard lens (strong barrel distortion) and the Brighton
Phantom 3 frame's intrinsics from its EXIF (4000x2250, ~40 m above ground).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.camera_info import CameraInfo
from calibration.exif import camera_from_metadata, read_metadata
from calibration.geometry import (
    CameraPose,
    PoseConfig,
    estimate_pose,
    ground_sampling_distance,
    gsd_at_pixels,
    image_to_ground,
    project_to_image,
    rotation_from_dji_gimbal,
    rotation_from_ypr,
    undistort_image,
    undistortion_maps,
    ypr_from_rotation,
)

DATA = Path(__file__).parent / "data"


def _chessboard_lens() -> CameraInfo:
    fs = cv2.FileStorage(str(DATA / "calibration" / "left_intrinsics.yml"), cv2.FILE_STORAGE_READ)
    try:
        K, D = fs.getNode("camera_matrix").mat(), fs.getNode("distortion_coefficients").mat().ravel()
    finally:
        fs.release()
    return CameraInfo(640, 480, K, D, camera_name="opencv_left")


def _brighton_camera() -> CameraInfo:
    return camera_from_metadata(
        read_metadata(DATA / "exif" / "DJI_0018_metadata_4000x2250.JPG"), use_35mm_equivalent=True
    )


def _pixel_grid(cam: CameraInfo, n: int = 8, border: float = 0.05) -> np.ndarray:
    xs = np.linspace(border * cam.width, (1 - border) * cam.width, n)
    ys = np.linspace(border * cam.height, (1 - border) * cam.height, n)
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def _angle_error(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    d = (np.array(a) - np.array(b) + 180.0) % 360.0 - 180.0
    return float(np.abs(d).max())


def test_attitude_convention():
    # Nadir, image top to the north: image right = east, image down = south, optical axis = down.
    R = rotation_from_ypr(0, 0, 0)
    np.testing.assert_allclose(R, [[1, 0, 0], [0, -1, 0], [0, 0, -1]], atol=1e-12)
    # Yaw 90: the image top (-y_cam) points east.
    np.testing.assert_allclose(rotation_from_ypr(90, 0, 0) @ [0, -1, 0], [1, 0, 0], atol=1e-12)
    # Pitch +10 at yaw 0: the optical axis leans north (towards the image top), still mostly down.
    axis = rotation_from_ypr(0, 10, 0) @ [0, 0, 1]
    np.testing.assert_allclose(axis, [0, np.sin(np.radians(10)), -np.cos(np.radians(10))], atol=1e-12)
    # Roll +10 at yaw 0: the optical axis leans west (towards the image left).
    assert (rotation_from_ypr(0, 0, 10) @ [0, 0, 1])[0] < 0
    # DJI gimbal angles: (yaw, pitch - 90, 0) is ours (yaw, pitch, 0); DJI pitch -90 is nadir.
    for yaw, pitch in [(45.0, 0.1), (-140.0, -2.0), (111.3, 2.0)]:
        np.testing.assert_allclose(
            rotation_from_dji_gimbal(yaw, pitch - 90, 0), rotation_from_ypr(yaw, pitch, 0), atol=1e-12
        )
    # Round trip over random attitudes away from the singularity (optical axis horizontal, pitch = +-90).
    rng = np.random.default_rng(0)
    for _ in range(50):
        ypr = (rng.uniform(-179, 180), rng.uniform(-80, 80), rng.uniform(-80, 80))
        assert _angle_error(ypr_from_rotation(rotation_from_ypr(*ypr)), ypr) < 1e-9


def test_projection_round_trip_and_flat_ground_pose():
    """Known pose -> ground points of real-lens pixels -> recovered pose within 1 cm and 0.1 degree."""
    cam = _chessboard_lens()
    truth = CameraPose.from_ypr([12.0, -7.0, 85.0], 37.0, 4.0, -3.0)
    pixels = _pixel_grid(cam)
    ground = image_to_ground(pixels, truth, cam, ground_height=2.0)
    np.testing.assert_allclose(ground[:, 2], 2.0, atol=1e-9)
    np.testing.assert_allclose(project_to_image(ground, truth, cam), pixels, atol=1e-6)
    est = estimate_pose(pixels, ground[:, :2], cam, ground_height=2.0)
    assert est.method == "IPPE" and est.used.all()
    assert np.linalg.norm(est.position - truth.position) < 0.01
    assert _angle_error(est.pose.ypr_deg, truth.ypr_deg) < 0.1
    assert est.altitude_agl_m == pytest.approx(83.0, abs=0.01)
    assert est.rms_px < 1e-3


def test_pose_on_dem_terrain():
    """Heights from a DEM sampler (non-planar points -> SQPNP), real Brighton intrinsics, 40 m above ground."""
    cam = _brighton_camera()

    def dem(e: np.ndarray, n: np.ndarray) -> np.ndarray:
        return 180.0 + 2.5 * np.sin(e / 9.0) + 1.5 * np.cos(n / 7.0) + 0.05 * e

    truth = CameraPose.from_ypr([5.0, 3.0, 220.0], -140.0, 2.0, 1.5)
    pixels = _pixel_grid(cam, 10)
    ground = image_to_ground(pixels, truth, cam, dem=dem)
    assert np.all(np.isfinite(ground))
    np.testing.assert_allclose(ground[:, 2], dem(ground[:, 0], ground[:, 1]), atol=1e-5)
    est = estimate_pose(pixels, ground[:, :2], cam, dem=dem)
    assert est.method == "SQPNP"
    assert np.linalg.norm(est.position - truth.position) < 0.01
    assert _angle_error(est.pose.ypr_deg, truth.ypr_deg) < 0.1
    assert est.altitude_agl_m == pytest.approx(220.0 - dem(np.array([5.0]), np.array([3.0]))[0], abs=0.01)


def test_pose_with_fisheye_camera():
    K = np.array([[300.0, 0, 319.5], [0, 300.0, 239.5], [0, 0, 1]])
    cam = CameraInfo(640, 480, K, [0.05, -0.01, 0.002, -0.0005], "equidistant")
    truth = CameraPose.from_ypr([0.0, 0.0, 30.0], 10.0, -5.0, 8.0)
    pixels = _pixel_grid(cam)
    ground = image_to_ground(pixels, truth, cam)
    np.testing.assert_allclose(project_to_image(ground, truth, cam), pixels, atol=1e-5)
    est = estimate_pose(pixels, ground[:, :2], cam)
    assert np.linalg.norm(est.position - truth.position) < 0.01
    assert _angle_error(est.pose.ypr_deg, truth.ypr_deg) < 0.1


def test_covariance_matches_monte_carlo_scatter():
    """The Gauss-Newton covariance must predict the scatter of poses from noisy pixels (0.5 px, no distortion)."""
    base = _brighton_camera()
    cam = CameraInfo(base.width, base.height, base.K, np.zeros(5))
    truth = CameraPose.from_ypr([0.0, 0.0, 40.0], 45.0, 1.0, 0.5)
    pixels = _pixel_grid(cam, 7)
    ground = image_to_ground(pixels, truth, cam)[:, :2]
    rng = np.random.default_rng(7)
    errors, stds = [], []
    for _ in range(150):
        est = estimate_pose(pixels + rng.normal(0, 0.5, pixels.shape), ground, cam)
        yaw, pitch, roll = est.pose.ypr_deg
        d_ang = (np.array([roll, pitch, yaw]) - np.array([0.5, 1.0, 45.0]) + 180) % 360 - 180
        errors.append(np.r_[est.position - truth.position, np.radians(d_ang)])
        stds.append(np.sqrt(np.diag(est.covariance)))
        assert est.sigma_px == pytest.approx(0.5, rel=0.35)
    ratio = np.std(errors, axis=0) / np.mean(stds, axis=0)
    assert np.all((ratio > 0.75) & (ratio < 1.33)), ratio
    assert np.all(np.abs(np.mean(errors, axis=0)) < 3 * np.mean(stds, axis=0) / np.sqrt(150) + 1e-9)


def test_ransac_rejects_outliers_and_dem_holes_are_left_out():
    cam = _chessboard_lens()
    truth = CameraPose.from_ypr([0.0, 0.0, 60.0], 200.0, -3.0, 2.0)
    pixels = _pixel_grid(cam, 9)
    ground = image_to_ground(pixels, truth, cam)[:, :2]
    bad = np.arange(0, len(pixels), 5)  # 20 % gross outliers
    noisy = pixels.copy()
    noisy[bad] += np.random.default_rng(1).uniform(15, 40, (len(bad), 2))
    est = estimate_pose(noisy, ground, cam, config=PoseConfig(ransac_threshold_px=2.0))
    assert not est.used[bad].any() and est.used.sum() == len(pixels) - len(bad)
    assert np.linalg.norm(est.position - truth.position) < 0.01
    assert _angle_error(est.pose.ypr_deg, truth.ypr_deg) < 0.1

    def holey_dem(e: np.ndarray, n: np.ndarray) -> np.ndarray:
        return np.where(e > 10.0, np.nan, 0.0)

    est = estimate_pose(pixels, ground, cam, dem=holey_dem)
    assert np.array_equal(est.used, ~(ground[:, 0] > 10.0)) and 0 < (~est.used).sum() < len(pixels) - 6
    assert np.linalg.norm(est.position - truth.position) < 0.01


def test_pose_bad_input_is_a_clear_error():
    cam = _chessboard_lens()
    truth = CameraPose.from_ypr([0.0, 0.0, 60.0], 0.0, 0.0, 0.0)
    pixels = _pixel_grid(cam, 4)
    ground = image_to_ground(pixels, truth, cam)
    with pytest.raises(ValueError, match="at least 6 usable"):
        estimate_pose(pixels[:5], ground[:5, :2], cam)
    with pytest.raises(ValueError, match="16 image points but 15 ground points"):
        estimate_pose(pixels, ground[:15, :2], cam)
    with pytest.raises(ValueError, match="already have heights"):
        estimate_pose(pixels, ground, cam, dem=lambda e, n: np.zeros_like(e))
    line = np.column_stack([np.linspace(-10, 10, 8), np.linspace(-5, 5, 8)])
    with pytest.raises(ValueError, match="collinear"):
        estimate_pose(project_to_image(np.column_stack([line, np.zeros(8)]), truth, cam), line, cam)


def test_gsd():
    cam = _brighton_camera()
    gx, gy = ground_sampling_distance(cam, 40.0)
    assert gx == pytest.approx(40.0 / cam.fx) and gy == pytest.approx(40.0 / cam.fy)  # 1.8 cm/px
    nadir = CameraPose.from_ypr([0.0, 0.0, 40.0], 30.0, 0.0, 0.0)
    local = gsd_at_pixels(np.array([[cam.cx, cam.cy]]), nadir, cam)
    np.testing.assert_allclose(local, [[gx, gy]], rtol=1e-6)
    tilted = CameraPose.from_ypr([0.0, 0.0, 40.0], 30.0, 20.0, 0.0)
    assert np.all(gsd_at_pixels(np.array([[cam.cx, cam.cy]]), tilted, cam) > local)
    with pytest.raises(ValueError, match="altitude"):
        ground_sampling_distance(cam, 0.0)


def test_rays_above_the_horizon_miss_the_ground():
    cam = _chessboard_lens()
    oblique = CameraPose.from_ypr([0.0, 0.0, 50.0], 0.0, 80.0, 0.0)  # optical axis 10 degrees below the horizon
    pts = image_to_ground(np.array([[cam.cx, 5.0], [cam.cx, 475.0]]), oblique, cam)
    assert np.isnan(pts[0]).all() and np.isfinite(pts[1]).all()


def test_undistortion_maps_are_cached_and_straighten_the_real_board():
    cam = _chessboard_lens()
    same = CameraInfo(640, 480, cam.K.copy(), cam.D.copy(), camera_name="opencv_left")
    maps = undistortion_maps(cam)
    assert undistortion_maps(same) is maps  # equal cameras share one cache entry
    half = undistortion_maps(cam, 320, 240)
    assert half is not maps and half.map1.shape[:2] == (240, 320)
    assert half.rectified.fx == pytest.approx(cam.fx / 2)
    with pytest.raises(ValueError, match="aspect ratio"):
        undistortion_maps(cam, 640, 240)

    def row_straightness(image: np.ndarray) -> float:
        ok, corners = cv2.findChessboardCorners(image, (9, 6))
        assert ok
        corners = cv2.cornerSubPix(
            image, corners, (5, 5), (-1, -1), (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 40, 1e-3)
        )
        rows = corners.reshape(6, 9, 2).astype(np.float64)
        dev = [np.linalg.svd(r - r.mean(axis=0), compute_uv=False)[-1] / 3.0 for r in rows]  # RMS off-line distance
        return float(np.mean(dev))

    gray = cv2.imread(str(DATA / "calibration" / "left12.jpg"), cv2.IMREAD_GRAYSCALE)
    before = row_straightness(gray)
    after = row_straightness(undistort_image(gray, cam))
    assert before > 0.5 and after < 0.25 * before
