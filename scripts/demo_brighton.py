"""End-to-end demo on the bundled Brighton Beach flight: export -> map cache -> locate real drone frames.

1. ``edge-export`` the reference checkpoint into ``out/brighton/bundle`` (ONNX FP32 + FP16; TensorRT when present).
2. ``edge-maps build`` the cache of the bundled orthophotos (``demo_data/brighton/maps``).
3. ``edge-locate`` every bundled frame (EXIF/XMP altitude + DJI intrinsics as the scale prior).
4. Print each pose with its horizontal error against the SfM camera positions and write ``footprints.png``.

With ``--service`` step 3 runs through the onboard service instead: a local MQTT broker starts on a free loopback
port (mosquitto when it is installed, otherwise the embedded pure-Python amqtt broker, MQTT 3.1.1; ``--broker``
picks one), ``edge-runtime`` replays the frames and publishes over MQTT, and a subscriber prints every pose (or
"no fix" status with its reason) with its error against the ground truth as it arrives. It ends with a one-line JSON
summary and writes ``mqtt_messages.json``, ``report.json``, ``footprints.png`` and ``service.log`` into ``--out``.
The exit status is 0 when the run went through (frames without a fix are an honest outcome, not a failure) and 1
when the broker or the service failed or a frame's outcome never arrived.

Run: ``python scripts/demo_brighton.py [--service [--broker auto|mosquitto|amqtt]] [--checkpoint CKPT]
[--out out/brighton] [--reuse]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.metrics import haversine_m

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "demo_data" / "brighton"
VEHICLE = "demo01"
PREFIX = f"topicgeo/v1/{VEHICLE}"
#: status events that end a frame (one per frame: a pose or one of these)
FRAME_EVENTS = ("no_fix", "frame_error", "locate_error")
#: status events worth a line besides the per-frame ones (heartbeats are only kept in mqtt_messages.json)
LIFECYCLE_EVENTS = ("birth", "unhealthy", "stopping", "offline", "failed", "will", "source_error", "telemetry_error")


def truth() -> dict[str, tuple[float, float]]:
    """SfM camera positions ``{file name: (lat, lon)}``."""
    shots = json.loads((DATA / "shots.geojson").read_text())
    return {f["properties"]["filename"]: (f["geometry"]["coordinates"][1], f["geometry"]["coordinates"][0])
            for f in shots["features"]}


def frame_files() -> list[Path]:
    """The bundled frames in name order (what the ``image_folder`` source replays)."""
    return sorted(p for p in (DATA / "frames").iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file in the same folder, then ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def run(cmd: list[str]) -> str:
    """Run a command of this project, echoing it; raise with its output on failure."""
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):  # edge-locate exits 1 when some frame is not located
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def draw_footprints(items: list[dict[str, Any]], cache: Path, out: Path,
                    truth_lonlat: dict[str, tuple[float, float]] | None = None) -> None:
    """The located footprints on each map of the cache (one panel per map, side by side).

    Args:
        items: ``{"label": str, "map_id": str, "quad_px": (4, 2) map pixel corners}`` per located frame (magenta).
        cache: the map cache folder.
        out: the PNG to write.
        truth_lonlat: ``{label: (lon, lat)}`` ground-truth camera positions, drawn as green crosses where they fall
            on a map.
    """
    import cv2

    from edge_runtime.map_cache import open_map_cache
    from edge_runtime.viz import write_rgb_png

    maps = open_map_cache(cache, verify=False)
    panels = []
    for map_id, entry in maps.maps.items():
        image, _ = entry.read_roi(0, 0, entry.georef.width, entry.georef.height)
        scale = 600.0 / max(image.shape[:2])
        panel = np.ascontiguousarray(cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale))))
        if truth_lonlat:
            labels = list(truth_lonlat)
            px = entry.georef.lonlat_to_pixels(np.array([truth_lonlat[k] for k in labels], np.float64)) * scale
            for label, (x, y) in zip(labels, px, strict=True):
                if 0 <= x < panel.shape[1] and 0 <= y < panel.shape[0]:
                    cv2.drawMarker(panel, (round(x), round(y)), (0, 255, 0), cv2.MARKER_CROSS, 12, 2)
                    cv2.putText(panel, label[-8:-4], (round(x) + 6, round(y) - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                                (0, 255, 0), 1, cv2.LINE_AA)
        for item in items:
            if item["map_id"] == map_id:
                quad = (np.asarray(item["quad_px"], np.float64) * scale).round().astype(np.int32).reshape(-1, 1, 2)
                cv2.polylines(panel, [quad], True, (255, 0, 255), 2, cv2.LINE_AA)
                cv2.putText(panel, Path(item["label"]).stem[-4:], tuple(int(v) for v in quad[0, 0]),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        cv2.putText(panel, map_id, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2, cv2.LINE_AA)
        panels.append(panel)
    maps.close()
    h = max(p.shape[0] for p in panels)
    canvas = np.hstack([np.pad(p, ((0, h - p.shape[0]), (0, 4), (0, 0))) for p in panels])
    write_rgb_png(str(out), canvas)


def pose_footprints_px(poses: list[dict[str, Any]], cache: Path) -> list[dict[str, Any]]:
    """Footprints of pose messages (GeoJSON ``[lon, lat]`` ring) in pixels of the map each pose is on."""
    from edge_runtime.map_cache import open_map_cache

    maps = open_map_cache(cache, verify=False)
    items = []
    for pose in poses:
        ring = np.asarray(pose["footprint"]["coordinates"][0], np.float64)[:-1]  # the ring is closed
        quad = maps.map(pose["map_id"]).georef.lonlat_to_pixels(ring)
        items.append({"label": pose["frame"]["name"], "map_id": pose["map_id"], "quad_px": quad})
    maps.close()
    return items


class Recorder:
    """The demo's MQTT subscriber: records every pose and status message and prints each as it arrives."""

    def __init__(self, port: int, protocol: str, gt: dict[str, tuple[float, float]]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.gt = gt
        self.messages: list[dict[str, Any]] = []
        self.frames: dict[str, dict[str, Any]] = {}  # file name -> outcome
        self.offline = threading.Event()
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        proto = MQTTProtocolVersion.MQTTv5 if protocol == "v5" else MQTTProtocolVersion.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-subscriber", protocol=proto)
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{PREFIX}/pose", 1), (f"{PREFIX}/status", 1)])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            print(f"??? undecodable message on {msg.topic}: {msg.payload[:80]!r}", flush=True)
            return
        with self._lock:
            self.messages.append({"topic": msg.topic, "retained": bool(msg.retain), **payload})
            if msg.topic.endswith("/pose"):
                self._pose(payload)
            else:
                self._status(payload)

    def _pose(self, msg: dict[str, Any]) -> None:
        name = Path(str(msg["frame"]["name"])).name
        lat, lon = msg["position"]["lat"], msg["position"]["lon"]
        err = haversine_m(lat, lon, *self.gt[name]) if name in self.gt else None
        latency = msg["latency_ms"]["locator"]["total"]
        self.frames[name] = {"frame": name, "outcome": "pose", "seq": msg["seq"], "map_id": msg["map_id"],
                             "lat": lat, "lon": lon, "error_m": err, "latency_ms": latency,
                             "end_to_end_ms": msg["latency_ms"].get("end_to_end"),
                             "confidence": msg["quality"]["confidence"], "inliers": msg["quality"]["inliers"]}
        self.frames[name]["std_m"] = msg["std_m"]["east"]
        err_text = f"{err:7.2f} m" if err is not None else "no ground truth"
        print(f"pose    {name:<13} {lat:12.7f} {lon:13.7f}  on {msg['map_id']:<20} error {err_text} "
              f"(claimed std {msg['std_m']['east']:.2f} m, locate {latency:.0f} ms, end to end "
              f"{msg['latency_ms'].get('end_to_end', float('nan')):.0f} ms)", flush=True)

    def _status(self, msg: dict[str, Any]) -> None:
        event = msg["event"]
        if event in FRAME_EVENTS:
            name = Path(str(msg.get("frame", "?"))).name
            detail = msg.get("detail") or {}
            reason = detail.get("reason") or msg.get("message")
            latency = (detail.get("latency_ms") or {}).get("total")
            self.frames[name] = {"frame": name, "outcome": event, "seq": msg.get("seq"), "reason": reason,
                                 "latency_ms": latency}
            label = "no fix" if event == "no_fix" else event
            print(f"{label:<7} {name:<13} {reason}", flush=True)
        elif event in LIFECYCLE_EVENTS:
            print(f"status  {event}: {msg.get('message') or msg.get('state')}", flush=True)
            if event in ("offline", "failed") and msg.get("online") is False:
                self.offline.set()

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def via_service(bundle: Path, cache: Path, out: Path, prefer: str, precision: str = "fp32") -> int:
    """Replay the frames through ``edge-runtime`` over a local broker, print and record what it publishes.

    Returns:
        The exit status: 0 when every frame's outcome arrived and the service ended cleanly, 1 otherwise.
    """
    import yaml

    from edge_runtime.service.broker import BrokerError, start_local_broker

    gt = truth()
    frames = frame_files()
    try:
        broker, kind = start_local_broker(out / "broker", prefer=prefer)  # type: ignore[arg-type]
    except BrokerError as exc:
        print(f"demo: no MQTT broker: {exc}", file=sys.stderr)
        return 1
    print(f"broker: {kind} on 127.0.0.1:{broker.port} (MQTT {'5' if broker.protocol == 'v5' else '3.1.1'}, "
          f"log {broker.log_path})", flush=True)
    failures: list[str] = []
    recorder: Recorder | None = None
    try:
        config = {
            "vehicle_id": VEHICLE, "bundle_dir": str(bundle), "cache_dir": str(cache), "log_level": "WARNING",
            # replayed at 2 fps, a camera's pace: as fast as they can be read, the frames would wait in the queue
            # behind each other and their published end-to-end latency would measure the replay, not the service
            "source": {"kind": "image_folder", "path": str(DATA / "frames"), "rate_fps": 2, "loop": False},
            "telemetry": {"kind": "exif", "exif_utc_offset_h": -5},
            # the Phantom 3's EXIF has no DJI CalibratedFocalLength: its 1/2.3" sensor is 6.17 mm wide
            "camera": {"from_exif": True, "sensor_width_mm": 6.17},
            "queue": {"maxsize": 4, "mode": "block"},
            "locator": {"backend": {"precision": precision}},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "protocol": broker.protocol},
        }
        cfg_path = out / "vehicle_demo.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        recorder = Recorder(broker.port, broker.protocol, gt)
        if not recorder.subscribed.wait(10):
            raise BrokerError(f"the demo subscriber did not subscribe on 127.0.0.1:{broker.port} within 10 s")
        print(f"$ edge-runtime --config {cfg_path}", flush=True)
        log_path = out / "service.log"
        t0 = time.monotonic()
        with log_path.open("w") as log:
            proc = subprocess.run([sys.executable, "-m", "edge_runtime.service.cli", "--config", str(cfg_path)],
                                  stdout=log, stderr=subprocess.STDOUT, check=False, timeout=1800)
        wall_s = time.monotonic() - t0
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            failures.append(f"edge-runtime exited with {proc.returncode} (log {log_path}):\n{tail}")
        if not recorder.offline.wait(5):
            failures.append("the service's final offline status never arrived")
        if not broker.running:
            failures.append(f"the {kind} broker died during the run (log {broker.log_path})")
    except (BrokerError, OSError, subprocess.TimeoutExpired) as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        wall_s = float("nan")
    finally:
        if recorder is not None:
            recorder.close()
        broker.stop()
    messages = recorder.messages if recorder is not None else []
    outcomes = recorder.frames if recorder is not None else {}
    missing = [p.name for p in frames if p.name not in outcomes]
    if missing and not failures:
        failures.append(f"no pose or status arrived for {len(missing)} of {len(frames)} frames: {missing}")
    records = [outcomes.get(p.name, {"frame": p.name, "outcome": "missing"}) for p in frames]
    poses = [m for m in messages if m["topic"].endswith("/pose")]
    errors = [r["error_m"] for r in records if r["outcome"] == "pose" and r["error_m"] is not None]
    latencies = [r["latency_ms"] for r in records if r.get("latency_ms") is not None]
    ends = [r["end_to_end_ms"] for r in records if r.get("end_to_end_ms") is not None]  # poses only
    names = {p.name for p in frames}
    picture = False
    try:
        draw_footprints(pose_footprints_px(poses, cache), cache, out / "footprints.png",
                        {name: (lon, lat) for name, (lat, lon) in gt.items() if name in names})
        picture = True
    except Exception as exc:  # report it with the rest; the messages and the report are still written
        failures.append(f"footprints picture: {type(exc).__name__}: {exc}")
    summary = {
        "broker": kind, "protocol": broker.protocol, "frames": len(frames), "poses": len(poses),
        "no_fix": sum(r["outcome"] == "no_fix" for r in records),
        "errors": sum(r["outcome"] in ("frame_error", "locate_error") for r in records),
        "missing": len(missing),
        "median_error_m": round(float(np.median(errors)), 2) if errors else None,
        "max_error_m": round(float(np.max(errors)), 2) if errors else None,
        "median_latency_ms": round(float(np.median(latencies)), 1) if latencies else None,
        "median_end_to_end_ms": round(float(np.median(ends)), 1) if ends else None,
        "wall_s": round(wall_s, 1) if math.isfinite(wall_s) else None, "ok": not failures,
    }
    print(json.dumps(summary), flush=True)
    write_json(out / "mqtt_messages.json", messages)
    write_json(out / "report.json", {"summary": summary, "frames": records, "failures": failures})
    print(f"wrote {out / 'mqtt_messages.json'}, {out / 'report.json'}"
          + (f", {out / 'footprints.png'}" if picture else ""), flush=True)
    for failure in failures:
        print(f"demo: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "topicgeo" / "assets" / "topicgeo_cpu.pt")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "brighton")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"],
                        help="export precision; fp16 also runs the FP16 graphs on this CPU (a GPU's numerics: "
                        "without it an FP16 bundle runs its FP32 graphs on a CPU)")
    parser.add_argument("--service", action="store_true", help="run the frames through edge-runtime and MQTT")
    parser.add_argument("--broker", default="auto", choices=["auto", "mosquitto", "amqtt"],
                        help="--service: the local broker (auto: mosquitto when installed, else amqtt)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the bundle and map cache already in --out (skip steps 1 and 2 when both exist)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edge_runtime.service.broker").setLevel(logging.INFO)  # which broker, and why
    py = sys.executable
    args.out = args.out.resolve()  # the service config written there names its paths absolutely
    bundle, cache = args.out / "bundle", args.out / "cache"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.reuse and (bundle / "manifest.json").is_file() and cache.is_dir():
        print(f"reusing {bundle} and {cache}", flush=True)
    else:
        run([py, "-m", "export.cli", "--checkpoint", str(args.checkpoint), "--precision", args.precision,
             "--query-size", "512", "--tile-size", "512", "--out", str(bundle), "--overwrite"])
        maps = sorted(str(p) for p in (DATA / "maps").glob("*.tif"))
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        map_args = [arg for m in maps for arg in ("--map", m)]
        run([py, "-m", "maps.cli", "build", "--bundle", str(bundle), *map_args, "--out", str(cache),
             "--precision", args.precision])
    if args.service:
        return via_service(bundle, cache, args.out, args.broker, args.precision)
    frames = [str(p) for p in frame_files()]
    out = run([py, "-m", "edge_runtime.locate_cli", "--bundle", str(bundle), "--cache", str(cache), "--json",
               "--sequence", "--sensor-width-mm", "6.17", "--viz", str(args.out / "viz"), "--precision",
               args.precision, *frames])
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    gt = truth()
    errors = []
    print(f"\n{'frame':<14} {'located':<8} {'map':<22} {'lat':>12} {'lon':>13} {'error m':>8} {'std m':>6}  reason")
    for rec in records:
        name = Path(rec["image"]).name
        if rec["ok"]:
            err = haversine_m(rec["lat"], rec["lon"], *gt[name])
            errors.append(err)
            print(f"{name:<14} {'yes':<8} {rec['map_id']:<22} {rec['lat']:>12.7f} {rec['lon']:>13.7f} {err:>8.2f} "
                  f"{rec['std_m'][0]:>6.2f}")
        else:
            print(f"{name:<14} {'no':<8} {rec.get('map_id', '-'):<22} {'':>12} {'':>13} {'':>8} {'':>6}  "
                  f"{rec['reason']}")
    located = len(errors)
    summary = {"frames": len(records), "located": located,
               "median_error_m": float(np.median(errors)) if errors else None,
               "max_error_m": float(np.max(errors)) if errors else None,
               "median_latency_ms": float(np.median([r["latency_ms"]["total"] for r in records])) if records else None}
    print(json.dumps(summary))
    write_json(args.out / "report.json", {"summary": summary, "frames": records})
    items = [{"label": r["image"], "map_id": r["map_id"], "quad_px": r["footprint_px"]} for r in records if r["ok"]]
    names = {Path(r["image"]).name for r in records}
    draw_footprints(items, cache, args.out / "footprints.png",
                    {name: (lon, lat) for name, (lat, lon) in gt.items() if name in names})
    print(f"pictures: {args.out / 'footprints.png'}, {args.out / 'viz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
