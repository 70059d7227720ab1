"""The onboard service with the real locator (the committed reference checkpoint's ONNX Runtime bundle and the demo
map cache) on the bundled Brighton Beach frames, over a real mosquitto (in process, and as the README's demo runs it:
``scripts/demo_brighton.py --service``, the service a process of its own): each frame's published outcome is what the
locator gives the same file directly (same fix or "no fix", same map, the same position to the centimetre, the same
heading and inliers), so the service adds no error of its own to the locator's (EXIF priors, intrinsics, colour order,
frame order and the temporal prior between frames all reach the locator as they do through ``edge-locate
--sequence``). The locator's own bound (every frame located, median error <= 1 m against the SfM positions) is checked
on the published poses as a strict xfail, as in ``tests/test_locator_accuracy.py``: the reference checkpoint does not
meet it yet."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
import yaml
from service_double import RecordingSubscriber

from benchmarks.harness.metrics import haversine_m
from edge_runtime.locate_cli import frame_priors, read_frame
from edge_runtime.locator import Locator, LocatorConfig
from edge_runtime.service import payloads
from edge_runtime.service.broker import LocalMosquitto, mosquitto_executable
from edge_runtime.service.config import load_config
from edge_runtime.service.sdnotify import Notifier
from edge_runtime.service.service import Service

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed")]

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo_data" / "brighton"
FRAMES = sorted((DEMO / "frames").glob("*.JPG"))
PREFIX = "topicgeo/v1/demo1"
POSE, STATUS = f"{PREFIX}/pose", f"{PREFIX}/status"
SENSOR_WIDTH_MM = 6.17  # DJI Phantom 3: its EXIF has a focal length in mm and no calibrated focal length in pixels
UTC_OFFSET_H = -5  # the frames' EXIF times are local (CDT)
SAME_POSITION_M = 0.01
MAX_MEDIAN_ERROR_M = 1.0  # the locator's bound (issue: every frame located, median <= 1 m)


@pytest.fixture(scope="module")
def published(reference_demo: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Replay the bundled frames through the service once; returns each frame's outcome by file name: the pose
    payload (``{"pose": ...}``) or the frame's status message (``{"status": ...}``)."""
    bundle, cache = reference_demo
    work = tmp_path_factory.mktemp("service_real")
    with LocalMosquitto(workdir=work / "broker") as broker:
        path = work / "vehicle.yaml"
        path.write_text(yaml.safe_dump({
            "vehicle_id": "demo1", "bundle_dir": str(bundle), "cache_dir": str(cache),
            "source": {"kind": "image_folder", "path": str(DEMO / "frames")},
            "telemetry": {"kind": "exif", "exif_utc_offset_h": UTC_OFFSET_H},
            "camera": {"from_exif": True, "sensor_width_mm": SENSOR_WIDTH_MM},
            "queue": {"maxsize": 2, "mode": "block"},  # every frame reaches the locator, in name order
            "mqtt": {"port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
        }))
        sub = RecordingSubscriber(broker.port, [POSE, STATUS])
        service = Service(load_config(path), Locator, LocatorConfig(), notifier=Notifier(""))
        result: dict[str, Any] = {}
        try:
            service.start()
            thread = threading.Thread(target=lambda: result.setdefault("code", service.run()), daemon=True)
            thread.start()
            thread.join(300)
            assert result.get("code") == 0, f"the replay did not end cleanly: {result}"
        finally:
            service.request_stop("test over")
            service.close()
        try:  # the service's last word: its offline status, sent at close
            assert sub.wait_for(lambda s: any(m["event"] == "offline" for m in s.json(STATUS)), 10)
        finally:
            sub.close()
    validator = jsonschema.Draft202012Validator(payloads.load_schema("pose"))
    outcomes: dict[str, dict] = {}
    for pose in sub.json(POSE):
        validator.validate(pose)
        outcomes[Path(pose["frame"]["name"]).name] = {"pose": pose}
    for status in sub.json(STATUS):
        if status["event"] in ("no_fix", "frame_error", "locate_error"):
            outcomes[Path(str(status.get("frame"))).name] = {"status": status}
    return outcomes


@pytest.fixture(scope="module")
def direct(reference_demo: tuple[Path, Path]) -> dict[str, Any]:
    """The same frames through one :class:`Locator` in the same order (its temporal prior carries from frame to frame
    as in the service), with the EXIF priors and intrinsics ``edge-locate`` reads."""
    locator = Locator.open(*reference_demo, LocatorConfig())
    results = {}
    for path in FRAMES:
        frame = read_frame(path)
        priors, camera = frame_priors(path, frame.shape[:2], None, None, True, SENSOR_WIDTH_MM, UTC_OFFSET_H)
        results[path.name] = locator.locate(frame, priors, camera)
    return results


def test_the_service_publishes_what_the_locator_finds(published: dict, direct: dict) -> None:
    assert sorted(published) == [p.name for p in FRAMES], "every frame gets a pose or a status"
    for name, expected in direct.items():
        outcome = published[name]
        if not expected.ok:
            assert "status" in outcome, f"{name}: published a pose where the locator has no fix ({expected.reason})"
            assert outcome["status"]["event"] == "no_fix", outcome["status"]
            assert outcome["status"]["detail"]["reason"] == expected.reason
            continue
        assert "pose" in outcome, f"{name}: no pose published, the locator has one: {outcome}"
        pose = outcome["pose"]
        assert pose["map_id"] == expected.map_id
        moved = haversine_m(pose["position"]["lat"], pose["position"]["lon"], expected.lat, expected.lon)
        assert moved <= SAME_POSITION_M, (name, moved)
        assert pose["heading_deg"] == pytest.approx(expected.heading_deg, abs=0.01)
        assert pose["quality"]["inliers"] == expected.inliers


@pytest.mark.xfail(strict=True, reason="the CPU reference checkpoint is not accurate enough yet "
                                       "(topicgeo/assets/MODEL_CARD.md); remove this mark when it passes")
def test_published_poses_meet_the_locators_bound(published: dict, truth: dict) -> None:
    errors = {name: haversine_m(o["pose"]["position"]["lat"], o["pose"]["position"]["lon"], *truth[name])
              for name, o in published.items() if "pose" in o}
    assert len(errors) == len(FRAMES), f"located {sorted(errors)} of {len(FRAMES)}"
    assert float(np.median(list(errors.values()))) <= MAX_MEDIAN_ERROR_M, errors


def test_the_demo_through_the_service_reports_what_the_locator_finds(reference_demo: tuple[Path, Path], direct: dict,
                                                                     demo_script, truth: dict, tmp_path: Path) -> None:
    """The README's first command past its setup: ``edge-runtime`` as a process of its own replays the frames at 2 fps
    over a local mosquitto, the demo's subscriber records each outcome with its error against the SfM position, and
    the report and the footprints picture are written."""
    assert demo_script.via_service(*reference_demo, tmp_path, "mosquitto") == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failures"] == [] and report["summary"]["broker"] == "mosquitto"
    records = {r["frame"]: r for r in report["frames"]}
    assert sorted(records) == [p.name for p in FRAMES]
    for name, expected in direct.items():
        record = records[name]
        assert record["outcome"] == ("pose" if expected.ok else "no_fix"), (name, record)
        if expected.ok:
            assert haversine_m(record["lat"], record["lon"], expected.lat, expected.lon) <= SAME_POSITION_M
            assert record["error_m"] == pytest.approx(haversine_m(expected.lat, expected.lon, *truth[name]), abs=0.01)
        else:
            assert record["reason"] == expected.reason
    located = sum(r.ok for r in direct.values())
    assert report["summary"]["poses"] == located and report["summary"]["no_fix"] == len(FRAMES) - located
    picture = cv2.imread(str(tmp_path / "footprints.png"))
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 100
