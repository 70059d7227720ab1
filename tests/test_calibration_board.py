"""Board detection and intrinsic calibration on OpenCV's real chessboard samples, plus the edge-calibrate CLI.

Reference: ``tests/data/calibration/left_intrinsics.yml``, the intrinsics OpenCV published with these 13 views.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.board import (
    CharucoSpec,
    ChessboardSpec,
    DetectionConfig,
    board_sharpness,
    detect_board,
    parse_board,
)
from calibration.calibrate import (
    CalibrationConfig,
    calibrate_images,
    calibrate_video,
    calibrate_views,
    write_corners_png,
)
from calibration.camera_info import read_camera_info
from calibration.cli import main

CALIB_DIR = Path(__file__).parent / "data" / "calibration"
EXIF_DIR = Path(__file__).parent / "data" / "exif"
BOARD = "chessboard:9x6:25"


def _published() -> tuple[np.ndarray, np.ndarray]:
    fs = cv2.FileStorage(str(CALIB_DIR / "left_intrinsics.yml"), cv2.FILE_STORAGE_READ)
    try:
        return fs.getNode("camera_matrix").mat(), fs.getNode("distortion_coefficients").mat().ravel()
    finally:
        fs.release()


def _views() -> list[Path]:
    return sorted(CALIB_DIR.glob("left*.jpg"))


@pytest.fixture(scope="module")
def pinhole_result():
    return calibrate_images(CALIB_DIR, CalibrationConfig(parse_board(BOARD)))


def test_parse_board_specs():
    assert parse_board("chessboard:9x6:25") == ChessboardSpec(9, 6, 25.0)
    spec = parse_board("charuco:7x5:40:30:dict_4x4_50:legacy")
    assert isinstance(spec, CharucoSpec) and spec.dictionary == "DICT_4X4_50" and spec.legacy
    for bad, message in [
        ("chessboard:9x6", "chessboard:COLSxROWS:SQUARE_MM"),
        ("chessboard:9by6:25", "COLSxROWS"),
        ("chessboard:9x6:-1", "square size"),
        ("charuco:7x5:30:40", "marker side"),
        ("charuco:7x5:40:30:DICT_NOPE", "unknown ArUco dictionary"),
        ("charuco:11x11:40:30:DICT_4X4_50", "has 50 markers"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_board(bad)
    np.testing.assert_allclose(
        ChessboardSpec(9, 6, 25).object_points()[[0, 1, 9]], [[0, 0, 0], [0.025, 0, 0], [0, 0.025, 0]]
    )


def test_pinhole_calibration_matches_published_intrinsics(pinhole_result):
    K_ref, _ = _published()
    cam = pinhole_result.camera
    assert pinhole_result.rms_px < 0.5
    assert len(pinhole_result.accepted) == 13
    assert cam.size == (640, 480) and cam.distortion_model == "plumb_bob" and cam.D.shape == (5,)
    assert cam.fx == pytest.approx(K_ref[0, 0], rel=0.02)
    assert cam.fy == pytest.approx(K_ref[1, 1], rel=0.02)
    assert abs(cam.cx - K_ref[0, 2]) < 5 and abs(cam.cy - K_ref[1, 2]) < 5
    # Per-view residuals: each view has 54 corners, so their mean square must equal the overall RMS squared.
    res = np.array([v.residual_px for v in pinhole_result.accepted])
    assert np.all(res < 0.5)
    assert np.sqrt(np.mean(res**2)) == pytest.approx(pinhole_result.rms_px, rel=1e-4)
    summary = pinhole_result.summary()
    assert "RMS reprojection error" in summary and "left14.jpg" in summary


def test_fisheye_calibration_fits_the_same_views():
    K_ref, _ = _published()
    result = calibrate_images(CALIB_DIR, CalibrationConfig(parse_board(BOARD), model="fisheye"))
    cam = result.camera
    assert cam.distortion_model == "equidistant" and cam.D.shape == (4,)
    assert result.rms_px < 0.5
    assert cam.fx == pytest.approx(K_ref[0, 0], rel=0.02)
    # The fisheye model must reproduce the detected corners of a view it was fitted on.
    det = detect_board(cv2.imread(str(CALIB_DIR / "left12.jpg")), parse_board(BOARD), name="left12.jpg")
    obj = det.object_points.reshape(-1, 1, 3).astype(np.float64)
    # Fit the view's pose under the fisheye model by LM on undistorted points, then reproject through the lens.
    und = cv2.fisheye.undistortPoints(det.image_points.reshape(-1, 1, 2).astype(np.float64), cam.K, cam.D, P=cam.K)
    ok, rvec, tvec = cv2.solvePnP(obj, und, cam.K, None)
    proj, _ = cv2.fisheye.projectPoints(obj, rvec, tvec, cam.K, cam.D)
    assert ok and np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - det.image_points) ** 2, axis=1))) < 0.5


def _copy_views(dst: Path) -> list[Path]:
    dst.mkdir()
    return [Path(shutil.copy(p, dst / p.name)) for p in _views()]


def test_blurred_and_partial_views_are_rejected_with_reasons(tmp_path):
    paths = _copy_views(tmp_path / "views")
    blurred = cv2.GaussianBlur(cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE), (0, 0), 2.0)
    cv2.imwrite(str(paths[0]), blurred)
    partial = cv2.imread(str(paths[1]), cv2.IMREAD_GRAYSCALE)
    partial[:, 400:] = 128  # hide the right part of the board
    cv2.imwrite(str(paths[1]), partial)
    result = calibrate_images(tmp_path / "views", CalibrationConfig(parse_board(BOARD)))
    by_name = {v.name: v for v in result.views}
    assert not by_name["left01.jpg"].accepted and "blurred" in by_name["left01.jpg"].reason
    assert by_name["left01.jpg"].n_points == 54  # found, but too blurred to use
    assert by_name["left01.jpg"].sharpness < 100 < min(v.sharpness for v in result.accepted)
    assert not by_name["left02.jpg"].accepted and "no complete 9x6 chessboard" in by_name["left02.jpg"].reason
    assert len(result.accepted) == 11 and result.rms_px < 0.5
    assert "rejected: blurred" in result.summary()


def test_board_touching_the_border_is_rejected():
    image = cv2.imread(str(CALIB_DIR / "left12.jpg"))
    spec = parse_board(BOARD)
    ok = detect_board(image, spec, name="left12")
    assert ok.accepted
    margin = float(min(ok.image_points.min(), 639 - ok.image_points[:, 0].max(), 479 - ok.image_points[:, 1].max()))
    det = detect_board(image, spec, DetectionConfig(border_margin_px=margin + 1.0), name="left12")
    assert not det.accepted and "border" in det.reason


def test_sharpness_is_comparable_across_resolutions():
    """Resampling to a nominal square size keeps the blur measure of one view similar at 2x resolution."""
    gray = cv2.imread(str(CALIB_DIR / "left12.jpg"), cv2.IMREAD_GRAYSCALE)
    det = detect_board(gray, parse_board(BOARD))
    s1 = board_sharpness(gray, det.image_points)
    big = cv2.resize(gray, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    s2 = board_sharpness(big, (det.image_points + 0.5) * 2 - 0.5)
    naive2 = cv2.Laplacian(big, cv2.CV_64F).var()
    naive1 = cv2.Laplacian(gray, cv2.CV_64F).var()
    assert abs(np.log(s2 / s1)) < abs(np.log(naive2 / naive1))


def test_no_board_found_is_a_clear_error(tmp_path):
    folder = tmp_path / "aerial"
    folder.mkdir()
    for src in EXIF_DIR.glob("*.JPG"):
        img = cv2.resize(cv2.imread(str(src)), (640, 480), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{src.stem}.png"), img)
    with pytest.raises(ValueError, match=r"no calibration board found in any of 2 views \(9x6 chessboard") as info:
        calibrate_images(folder, CalibrationConfig(parse_board(BOARD)))
    assert "AWPE_Pigeon_Lake_2020_DJI_0005.png: no complete 9x6 chessboard found" in str(info.value)


def test_mixed_image_sizes_are_a_clear_error(tmp_path):
    paths = _copy_views(tmp_path / "views")
    small = cv2.resize(cv2.imread(str(paths[3])), (320, 240), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(paths[3]), small)
    with pytest.raises(ValueError, match=r"mixed image sizes: left01.jpg is 640x480 but left04.jpg is 320x240"):
        calibrate_images(tmp_path / "views", CalibrationConfig(parse_board(BOARD)))


def test_missing_or_empty_inputs(tmp_path):
    cfg = CalibrationConfig(parse_board(BOARD))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        calibrate_images(tmp_path / "nope", cfg)
    with pytest.raises(ValueError, match="no images"):
        calibrate_images(tmp_path, cfg)
    with pytest.raises(FileNotFoundError, match="video"):
        calibrate_video(tmp_path / "nope.avi", cfg)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.jpg"):
        calibrate_images(tmp_path, cfg)
    with pytest.raises(ValueError, match="only 3 usable views"):
        calibrate_images(_views()[:3], cfg)


def test_video_input_samples_frames(tmp_path):
    video = tmp_path / "board.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for p in _views():
        frame = cv2.imread(str(p))
        for _ in range(3):  # each view held for 3 frames; sampling every 3rd frame takes each once
            writer.write(frame)
    writer.release()
    K_ref, _ = _published()
    result = calibrate_video(video, CalibrationConfig(parse_board(BOARD), video_every=3))
    assert [v.name for v in result.views][:3] == ["frame_000000", "frame_000003", "frame_000006"]
    assert len(result.views) == 13 and len(result.accepted) == 13
    assert result.rms_px < 0.5
    assert result.camera.fx == pytest.approx(K_ref[0, 0], rel=0.02)


def test_corners_picture(tmp_path, pinhole_result):
    path = write_corners_png(tmp_path / "corners.png", pinhole_result)
    pic = cv2.imread(str(path))
    assert pic.shape == (3 * 240, 5 * 320, 3)  # 13 tiles of 320x240, 5 per row
    tile = pic[240:480, 0:320].astype(int)  # left06.jpg
    plain = cv2.resize(cv2.imread(str(CALIB_DIR / "left06.jpg")), (320, 240), interpolation=cv2.INTER_AREA).astype(int)
    coloured = np.abs(tile[20:] - plain[20:]).max(axis=2) > 60  # below the label band
    assert coloured.sum() > 500  # the drawn corners and lines


def _render_charuco(spec: CharucoSpec, K: np.ndarray, rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """Synthetic 640x480 view of a ChArUco board under a known pose (no real ChArUco images are available)."""
    ppm = 4000.0  # board image pixels per metre
    margin = 20
    board = spec.make_board()
    w = round(spec.cols * spec.square_mm / 1000 * ppm) + 2 * margin
    h = round(spec.rows * spec.square_mm / 1000 * ppm) + 2 * margin
    img = board.generateImage((w, h), marginSize=margin)
    S = np.array([[1 / ppm, 0, (0.5 - margin) / ppm], [0, 1 / ppm, (0.5 - margin) / ppm], [0, 0, 1]])
    R, _ = cv2.Rodrigues(rvec)
    H = K @ np.column_stack([R[:, 0], R[:, 1], tvec]) @ S  # board-image pixel -> view pixel (centre convention)
    up = 4  # render at 4x and area-average down, so the view is anti-aliased like a real camera's
    A = np.array([[up, 0, (up - 1) / 2], [0, up, (up - 1) / 2], [0, 0, 1.0]])  # view pixel -> 4x pixel (centres)
    big = cv2.warpPerspective(img, A @ H, (640 * up, 480 * up), flags=cv2.INTER_LINEAR, borderValue=128)
    return cv2.resize(big, (640, 480), interpolation=cv2.INTER_AREA)


def test_charuco_calibration_recovers_known_intrinsics():
    """Synthetic views (rendered under a known K), since no real ChArUco images are available."""
    spec = parse_board("charuco:7x5:40:30:DICT_5X5_100")
    K = np.array([[600.0, 0, 322.0], [0, 600.0, 238.0], [0, 0, 1]])
    board_centre = np.array([0.14, 0.10, 0.0])
    rng = np.random.default_rng(3)
    views = []
    for k in range(8):
        angles = np.radians(rng.uniform(-25, 25, 3))
        R, _ = cv2.Rodrigues(angles)
        t = np.array([rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(0.45, 0.6)]) - R @ board_centre
        views.append((f"view{k}", _render_charuco(spec, K, angles, t)))
    # A ninth view with most of the board hidden: ChArUco still finds some corners, which makes it a partial board.
    partial = views[0][1].copy()
    xs = detect_board(partial, spec).image_points[:, 0]
    partial[:, round(xs.min() + 0.35 * (xs.max() - xs.min())) :] = 128
    views.append(("partial", partial))
    result = calibrate_views(views, CalibrationConfig(spec, min_views=5))
    by_name = {v.name: v for v in result.views}
    assert not by_name["partial"].accepted and "partial board" in by_name["partial"].reason
    assert 0 < by_name["partial"].n_points < 12
    assert len(result.accepted) == 8
    assert result.rms_px < 0.2
    assert result.camera.fx == pytest.approx(600.0, rel=0.005) and result.camera.fy == pytest.approx(600.0, rel=0.005)
    assert abs(result.camera.cx - 322.0) < 2 and abs(result.camera.cy - 238.0) < 2


def test_cli_on_chessboard_folder_writes_yaml(tmp_path, capsys):
    out = tmp_path / "camera.yaml"
    png = tmp_path / "corners.png"
    rc = main(["--images", str(CALIB_DIR), "--board", BOARD, "--out", str(out), "--corners-png", str(png)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RMS reprojection error" in printed and "left01.jpg:" in printed
    cam = read_camera_info(out)
    K_ref, _ = _published()
    assert cam.fx == pytest.approx(K_ref[0, 0], rel=0.02) and cam.distortion_model == "plumb_bob"
    assert cv2.imread(str(png)) is not None


def test_cli_reports_bad_input(tmp_path, capsys):
    rc = main(["--images", str(tmp_path), "--board", BOARD, "--out", str(tmp_path / "c.yaml")])
    assert rc == 1 and "no images" in capsys.readouterr().err
    rc = main(["--images", str(CALIB_DIR), "--board", "chessboard:9x6", "--out", str(tmp_path / "c.yaml")])
    assert rc == 1 and "bad board spec" in capsys.readouterr().err
    assert not (tmp_path / "c.yaml").exists()
    with pytest.raises(SystemExit) as info:
        main(["--board", BOARD, "--out", str(tmp_path / "c.yaml")])  # neither --images nor --video
    assert info.value.code == 2
