"""End-to-end demo on the bundled Brighton Beach flight: export -> map cache -> locate real drone frames.

1. ``edge-export`` the reference checkpoint into ``out/brighton/bundle`` (ONNX FP32 + FP16; TensorRT when present).
2. ``edge-maps build`` the cache of the bundled orthophotos (``demo_data/brighton/maps``).
3. ``edge-locate`` every bundled frame (EXIF/XMP altitude + DJI intrinsics as the scale prior).
4. Print each pose with its horizontal error against the SfM camera positions and write ``footprints.png``.

With ``--service`` step 3 runs through the onboard service instead: a local mosquitto broker starts on a free
loopback port, ``edge-runtime`` replays the frames and publishes over MQTT, and a subscriber prints every pose (or
"no fix" status) with its error against the ground truth.

Run: ``python scripts/demo_brighton.py [--service] [--checkpoint CKPT] [--out out/brighton]``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "demo_data" / "brighton"


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (mean Earth radius)."""
    r = 6_371_008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def truth() -> dict[str, tuple[float, float]]:
    """SfM camera positions ``{file name: (lat, lon)}``."""
    shots = json.loads((DATA / "shots.geojson").read_text())
    return {f["properties"]["filename"]: (f["geometry"]["coordinates"][1], f["geometry"]["coordinates"][0])
            for f in shots["features"]}


def run(cmd: list[str]) -> str:
    """Run a command of this project, echoing it; raise with its output on failure."""
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):  # edge-locate exits 1 when some frame is not located
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def draw_footprints(records: list[dict], cache: Path, out: Path) -> None:
    """All located footprints on each map (one picture per map, side by side)."""
    import cv2

    from edge_runtime.map_cache import open_map_cache
    from edge_runtime.viz import write_rgb_png

    maps = open_map_cache(cache, verify=False)
    panels = []
    for map_id, entry in maps.maps.items():
        image, _ = entry.read_roi(0, 0, entry.georef.width, entry.georef.height)
        scale = 600.0 / max(image.shape[:2])
        panel = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
        for rec in records:
            if rec.get("ok") and rec.get("map_id") == map_id:
                quad = (np.asarray(rec["footprint_px"]) * scale).round().astype(np.int32).reshape(-1, 1, 2)
                cv2.polylines(panel, [quad], True, (255, 0, 255), 2, cv2.LINE_AA)
                cv2.putText(panel, Path(rec["image"]).stem[-4:], tuple(quad[0, 0]), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                            (255, 255, 0), 1, cv2.LINE_AA)
        cv2.putText(panel, map_id, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2, cv2.LINE_AA)
        panels.append(panel)
    h = max(p.shape[0] for p in panels)
    canvas = np.hstack([np.pad(p, ((0, h - p.shape[0]), (0, 4), (0, 0))) for p in panels])
    write_rgb_png(str(out), canvas)


def via_service(bundle: Path, cache: Path, out: Path) -> list[dict]:
    """Replay the frames through ``edge-runtime`` and collect what it publishes (poses and no-fix statuses)."""
    import paho.mqtt.client as mqtt
    import yaml

    from edge_runtime.service.broker import LocalMosquitto

    broker = LocalMosquitto(workdir=out / "broker").start()
    received: list[dict] = []
    try:
        config = {
            "vehicle_id": "demo01", "bundle_dir": str(bundle), "cache_dir": str(cache), "log_level": "WARNING",
            "source": {"kind": "image_folder", "path": str(DATA / "frames"), "rate_fps": 0, "loop": False},
            "telemetry": {"kind": "exif", "exif_utc_offset_h": -5},
            "camera": {"from_exif": True},
            "queue": {"maxsize": 4, "mode": "block"},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "protocol": "v5"},
        }
        cfg_path = out / "vehicle_demo.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-subscriber")
        client.on_message = lambda _c, _u, msg: received.append({"topic": msg.topic, **json.loads(msg.payload)})
        client.connect("127.0.0.1", broker.port)
        client.subscribe("topicgeo/v1/demo01/#", qos=1)
        client.loop_start()
        print(f"$ edge-runtime --config {cfg_path}  (broker 127.0.0.1:{broker.port})", flush=True)
        proc = subprocess.run([sys.executable, "-m", "edge_runtime.service.cli", "--config", str(cfg_path)],
                              capture_output=True, text=True, check=False, timeout=1800)
        client.loop_stop()
        client.disconnect()
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
    finally:
        broker.stop()
    return received


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "topicgeo" / "assets" / "topicgeo_cpu.pt")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "brighton")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    parser.add_argument("--service", action="store_true", help="run the frames through edge-runtime and MQTT")
    args = parser.parse_args(argv)
    py = sys.executable
    bundle, cache = args.out / "bundle", args.out / "cache"
    args.out.mkdir(parents=True, exist_ok=True)
    run([py, "-m", "export.cli", "--checkpoint", str(args.checkpoint), "--precision", args.precision,
         "--query-size", "512", "--tile-size", "512", "--out", str(bundle), "--overwrite"])
    maps = sorted(str(p) for p in (DATA / "maps").glob("*.tif"))
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    map_args = [arg for m in maps for arg in ("--map", m)]
    run([py, "-m", "maps.cli", "build", "--bundle", str(bundle), *map_args, "--out", str(cache)])
    if args.service:
        gt = truth()
        messages = via_service(bundle, cache, args.out)
        for msg in messages:
            kind = msg["topic"].rsplit("/", 1)[-1]
            if kind == "pose":
                name = Path(str(msg["frame"].get("name", ""))).name
                lat, lon = msg["position"]["lat"], msg["position"]["lon"]
                err = haversine_m(lat, lon, *gt[name]) if name in gt else float("nan")
                print(f"pose   {name}: {lat:.7f}, {lon:.7f} on {msg['map_id']}  error {err:.2f} m")
            elif kind == "status":
                print(f"status: {json.dumps({k: v for k, v in msg.items() if k != 'topic'})[:300]}")
        (args.out / "mqtt_messages.json").write_text(json.dumps(messages, indent=2))
        return 0
    frames = sorted(str(p) for p in (DATA / "frames").glob("*.JPG"))
    out = run([py, "-m", "edge_runtime.locate_cli", "--bundle", str(bundle), "--cache", str(cache), "--json",
               "--viz", str(args.out / "viz"), *frames])
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    gt = truth()
    errors = []
    print(f"\n{'frame':<14} {'located':<8} {'map':<22} {'lat':>12} {'lon':>13} {'error m':>8}  reason")
    for rec in records:
        name = Path(rec["image"]).name
        if rec["ok"]:
            err = haversine_m(rec["lat"], rec["lon"], *gt[name])
            errors.append(err)
            print(f"{name:<14} {'yes':<8} {rec['map_id']:<22} {rec['lat']:>12.7f} {rec['lon']:>13.7f} {err:>8.2f}")
        else:
            print(f"{name:<14} {'no':<8} {rec.get('map_id', '-'):<22} {'':>12} {'':>13} {'':>8}  {rec['reason']}")
    located = len(errors)
    summary = {"frames": len(records), "located": located,
               "median_error_m": float(np.median(errors)) if errors else None,
               "max_error_m": float(np.max(errors)) if errors else None,
               "median_latency_ms": float(np.median([r["latency_ms"]["total"] for r in records])) if records else None}
    print(json.dumps(summary))
    (args.out / "report.json").write_text(json.dumps({"summary": summary, "frames": records}, indent=2))
    draw_footprints(records, cache, args.out / "footprints.png")
    print(f"pictures: {args.out / 'footprints.png'}, {args.out / 'viz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
