"""Frame sources, decoding and priors on the real Brighton frames (EXIF/XMP), a video made from them, and cameras."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.service.config import SourceConfig
from edge_runtime.service.service import FrameError, decode_frame
from edge_runtime.service.sources import CameraSource, Frame, ImageFolderSource, SourceError, VideoFileSource
from edge_runtime.service.telemetry import (
    TelemetryError,
    TelemetryStore,
    parse_telemetry,
    priors_from_jpeg_bytes,
    priors_from_jpeg_file,
)

DATA = Path(__file__).parent / "data"
FRAMES = DATA / "service" / "frames"
NAMES = ["DJI_0030.JPG", "DJI_0031.JPG", "DJI_0033.JPG"]


def collect(source, timeout: float = 10.0, limit: int | None = None) -> list[Frame]:
    frames: list[Frame] = []
    enough = threading.Event()

    def emit(frame: Frame) -> bool:
        frames.append(frame)
        if limit is not None and len(frames) >= limit:
            enough.set()
            return False
        return True

    source.open()
    source.start(emit, lambda *a: frames.append(a))
    deadline = time.monotonic() + timeout
    while not (source.finished.is_set() or enough.is_set()) and time.monotonic() < deadline:
        time.sleep(0.01)
    source.stop()
    return frames


def exif_rows() -> dict[str, dict[str, str]]:
    with open(DATA / "exif" / "poses_exif_xmp.csv", newline="") as fh:
        return {row["filename"]: row for row in csv.DictReader(fh)}


def test_image_folder_delivers_jpeg_files_in_name_order_at_the_set_rate():
    t0 = time.monotonic()
    frames = collect(ImageFolderSource(FRAMES, rate_fps=10.0))
    elapsed = time.monotonic() - t0
    assert [f.name for f in frames] == NAMES
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.jpeg == (FRAMES / f.name).read_bytes() and f.path == FRAMES / f.name for f in frames)
    assert elapsed >= 0.19  # frames 1 and 2 wait 0.1 s each at 10 fps


def test_image_folder_loops_and_refuses_an_empty_folder(tmp_path):
    frames = collect(ImageFolderSource(FRAMES, loop=True), limit=7)
    assert [f.name for f in frames] == NAMES * 2 + NAMES[:1]
    with pytest.raises(SourceError, match="holds no JPEG"):
        ImageFolderSource(tmp_path).open()
    with pytest.raises(SourceError, match="does not exist"):
        ImageFolderSource(tmp_path / "absent").open()


def test_exif_priors_match_the_flight_log():
    rows = exif_rows()
    for name in NAMES:
        priors, meta = priors_from_jpeg_file(FRAMES / name, utc_offset_h=-5.0)
        row = rows[name]
        assert priors.source == "exif"
        assert priors.altitude_agl_m == pytest.approx(float(row["rel_alt_m"]), abs=1e-9)
        assert priors.yaw_deg == pytest.approx(float(row["gimbal_yaw"]), abs=1e-6)
        # DJI gimbal pitch -90 is nadir = pitch 0 here; -89.9 tilts 0.1 deg
        assert priors.pitch_deg == pytest.approx(float(row["gimbal_pitch"]) + 90.0, abs=1e-6)
        assert priors.roll_deg == pytest.approx(float(row["gimbal_roll"]), abs=1e-6)
        assert priors.capture_time == _utc_epoch(row["datetime_original"]) + 5 * 3600  # local CDT -> UTC
        assert priors_from_jpeg_bytes((FRAMES / name).read_bytes(), name, -5.0) == priors
        assert (meta.width, meta.height) == (512, 288)


def _utc_epoch(text: str) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(text, "%Y:%m:%d %H:%M:%S")))


def test_exif_capture_time_is_shifted_by_the_configured_offset():
    p0, _ = priors_from_jpeg_file(FRAMES / NAMES[0], utc_offset_h=0.0)
    p5, _ = priors_from_jpeg_file(FRAMES / NAMES[0], utc_offset_h=-5.0)
    assert p0.capture_time == _utc_epoch("2016:06:23 16:33:27")
    assert p5.capture_time - p0.capture_time == pytest.approx(5 * 3600)


def test_decode_gives_rgb_and_refuses_corrupt_jpegs():
    data = (FRAMES / NAMES[0]).read_bytes()
    rgb = decode_frame(Frame(0, "ok", 0.0, 0.0, jpeg=data))
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert rgb.shape == (288, 512, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, bgr[:, :, ::-1])
    assert np.array_equal(decode_frame(Frame(0, "pad", 0.0, 0.0, jpeg=data + b"\0" * 16)), rgb)
    with pytest.raises(FrameError, match="truncated"):
        decode_frame(Frame(0, "cut", 0.0, 0.0, jpeg=data[: len(data) * 2 // 3]))
    with pytest.raises(FrameError, match="not a JPEG"):
        decode_frame(Frame(0, "garbage", 0.0, 0.0, jpeg=b"\x89PNG\r\n\x1a\n" + data[8:]))
    with pytest.raises(FrameError, match="empty"):
        decode_frame(Frame(0, "empty", 0.0, 0.0, jpeg=b""))
    broken = bytearray(data)
    sos = broken.rfind(b"\xff\xda")  # the main scan (the EXIF thumbnail has its own)
    broken[sos - 300 : sos] = b"\x00" * 300  # wipe the Huffman/quantisation tables before the scan
    with pytest.raises(FrameError, match="broken: corrupt JPEG: expected a marker"):
        decode_frame(Frame(0, "broken", 0.0, 0.0, jpeg=bytes(broken)))
    zero = bytearray(data)
    sof = zero.rfind(b"\xff\xc0")
    zero[sof + 7 : sof + 9] = b"\x00\x00"  # frame width 0
    with pytest.raises(FrameError, match=r"zero: corrupt JPEG \(OpenCV cannot decode"):
        decode_frame(Frame(0, "zero", 0.0, 0.0, jpeg=bytes(zero)))
    with pytest.raises(FrameError, match=r"\(H, W, 3\) uint8"):
        decode_frame(Frame(0, "gray", 0.0, 0.0, image_bgr=np.zeros((4, 4), np.uint8)))


def test_video_file_source_reads_every_frame(tmp_path):
    path = tmp_path / "flight.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (512, 288))
    images = [cv2.imread(str(FRAMES / n)) for n in NAMES]
    for image in images + images[:2]:
        writer.write(image)
    writer.release()
    frames = collect(VideoFileSource(path))
    assert [f.name for f in frames] == [f"video#{i}" for i in range(5)]
    assert all(f.image_bgr.shape == (288, 512, 3) for f in frames)
    # MJPG re-encoding: the decoded frames stay close to the originals
    assert np.mean(np.abs(frames[1].image_bgr.astype(float) - images[1].astype(float))) < 6.0
    looped = collect(VideoFileSource(path, loop=True), limit=12)
    assert len(looped) == 12
    with pytest.raises(SourceError, match=r"cannot open the video|no readable frame"):
        bad = tmp_path / "bad.avi"
        bad.write_bytes(b"not a video")
        VideoFileSource(bad).open()


def test_camera_delivers_frames_and_reopens_after_a_read_failure(tmp_path):
    """A capture that stops delivering (here: a video file opened as the camera device; it ends as an unplugged
    camera does) is reported and reopened after ``reopen_delay_s``, and frames keep coming, numbered on."""
    path = tmp_path / "camera.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (512, 288))
    images = [cv2.imread(str(FRAMES / n)) for n in NAMES]
    for image in images:
        writer.write(image)
    writer.release()
    # collect() counts frames and reports together: three frames, a report, three frames, a report, a frame
    got = collect(CameraSource(SourceConfig(kind="camera", device=str(path), reopen_delay_s=0.05)), limit=8)
    frames = [f for f in got if isinstance(f, Frame)]
    reports = [r for r in got if not isinstance(r, Frame)]
    assert [f.name for f in frames] == [f"camera#{i}" for i in range(7)]
    assert all(f.image_bgr.shape == (288, 512, 3) for f in frames)
    # the reopened capture starts again: frame 3 is the first image again
    assert np.mean(np.abs(frames[3].image_bgr.astype(float) - frames[0].image_bgr.astype(float))) < 1.0
    assert np.mean(np.abs(frames[1].image_bgr.astype(float) - frames[0].image_bgr.astype(float))) > 5.0
    assert all(r[0] == "source_error" and "read failed; reopening" in r[1] for r in reports)
    assert [i for i, g in enumerate(got) if not isinstance(g, Frame)] == [3, 7]  # each time the capture ran dry


def test_camera_errors_name_the_device():
    with pytest.raises(SourceError, match="cannot open camera 57"):
        CameraSource(SourceConfig(kind="camera", device=57, api="v4l2")).open()
    pipeline = "videotestsrc num-buffers=1 ! videoconvert ! appsink"
    if cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(SourceError, match="no gstreamer capture backend"):
        CameraSource(SourceConfig(kind="camera", device=pipeline))


def test_telemetry_messages_are_parsed_strictly():
    sample = parse_telemetry(json.dumps({"t": 1.7e9, "altitude_agl_m": 41.5, "yaw_deg": 12.0}).encode(), 5.0)
    assert sample.priors.altitude_agl_m == 41.5 and sample.priors.yaw_deg == 12.0 and sample.priors.source == "mqtt"
    assert sample.t == 1.7e9 and sample.received_mono == 5.0
    for payload, fragment in [
        (b"", "empty"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"altitude": 40}).encode(), "'altitude' is unknown"),
        (json.dumps({"altitude_agl_m": "40"}).encode(), "finite number"),
        (json.dumps({"altitude_agl_m": -3.0}).encode(), "positive"),
        (b'{"yaw_deg": NaN}', "finite number"),
        (json.dumps({"schema": "other/1"}).encode(), "schema"),
    ]:
        with pytest.raises(TelemetryError, match=fragment):
            parse_telemetry(payload, 0.0)


def test_telemetry_store_ignores_stale_samples():
    store = TelemetryStore(max_age_s=0.5)
    assert store.latest() is None
    sample = store.update(b'{"altitude_agl_m": 40.0}')
    assert store.latest(sample.received_mono + 0.4) is sample
    assert store.latest(sample.received_mono + 0.6) is None
    with pytest.raises(TelemetryError):
        store.update(b"{}x")
    assert store.latest(sample.received_mono + 0.1) is sample  # a bad message keeps the previous sample
