"""The service config: the shipped examples load; unknown keys, bad values and unset variables name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from edge_runtime.service.cli import load_all
from edge_runtime.service.config import ConfigError, ServiceConfig, load_config, parse_section

REPO = Path(__file__).resolve().parent.parent
FRAMES = Path(__file__).parent / "data" / "service" / "frames"


def write(tmp_path: Path, data: dict, name: str = "vehicle.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def base(**overrides) -> dict:
    data = {
        "vehicle_id": "uav01",
        "bundle_dir": "bundle",
        "cache_dir": "cache",
        "source": {"kind": "image_folder", "path": str(FRAMES)},
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize("name", ["vehicle.yaml", "vehicle_replay.yaml", "vehicle_mqtt.yaml"])
def test_shipped_examples_load_with_the_real_locator_config(name, monkeypatch):
    from edge_runtime.locator import LocatorConfig

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    config, locator_config = load_all(REPO / "configs" / name, LocatorConfig)
    assert isinstance(config, ServiceConfig)
    assert isinstance(locator_config, LocatorConfig)
    assert config.topic("pose") == f"topicgeo/v1/{config.vehicle_id}/pose"
    if name == "vehicle.yaml":  # defaults of the ${VAR:-default} paths outside systemd
        assert config.bundle_dir == Path("/var/lib/topicgeo-edge/bundle")
        assert config.cache_dir == Path("/var/cache/topicgeo-edge/maps")
        assert locator_config.backend.backend == "tensorrt" and locator_config.backend.allow_fallback
    if name == "vehicle_replay.yaml":
        assert config.source.path == (REPO / "configs" / "../tests/data/service/frames")
        assert config.source.path.resolve() == FRAMES.resolve()


def test_systemd_directories_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/x")
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/x")
    config = load_config(REPO / "configs" / "vehicle.yaml")
    assert config.bundle_dir == Path("/var/lib/x/bundle")
    assert config.cache_dir == Path("/var/cache/x/maps")


def test_defaults_and_relative_paths(tmp_path):
    config = load_config(write(tmp_path, base()))
    assert config.bundle_dir == tmp_path.resolve() / "bundle"
    assert config.mqtt.protocol == "v5" and config.mqtt.qos.pose == 0 and config.mqtt.qos.status == 1
    assert config.queue.maxsize == 1 and config.queue.mode == "latest"
    assert config.client_id == "topicgeo-edge-uav01"
    assert config.frame_topic is None


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"mqtt": {"prot": "v5"}}, "mqtt.prot", "did you mean 'port'"),
        ({"mqtt": {"protocol": 5}}, "mqtt.protocol", "one of 'v5', 'v311'"),
        ({"mqtt": {"port": 70000}}, "mqtt.port", "1..65535"),
        ({"mqtt": {"port": "1883"}}, "mqtt.port", "must be an integer"),
        ({"mqtt": {"qos": {"pose": 3}}}, "mqtt.qos.pose", "0, 1 or 2"),
        ({"mqtt": {"topic_prefix": "topicgeo/#"}}, "mqtt.topic_prefix", "wildcards"),
        ({"mqtt": {"password_env": "X"}}, "mqtt.username", "without a username"),
        ({"mqtt": {"tls": {"ca_certs": "/nonexistent/ca.crt", "enabled": True}}}, "mqtt.tls.ca_certs",
         "does not exist"),
        ({"queue": {"maxsize": 0}}, "queue.maxsize", "1..1000"),
        ({"vehicle_id": "UAV 1"}, "vehicle_id", "[a-z0-9_-]"),
        ({"extra": 1}, "extra", "unknown key"),
        ({"source": {"kind": "image_folder"}}, "source.path", "is required"),
        ({"source": {"kind": "webcam"}}, "source.kind", "'image_folder'"),
        ({"source": {"kind": "camera"}}, "source.device", "is required"),
        ({"source": {"kind": "mqtt", "frame_size": [512]}}, "source.frame_size", "list of 2 values"),
        ({"source": {"kind": "camera", "device": 0}, "telemetry": {"kind": "exif"}}, "telemetry.kind",
         "JPEG source"),
        ({"source": {"kind": "mqtt"}, "queue": {"mode": "block"}}, "queue.mode", "'latest'"),
        ({"telemetry": {"kind": "fixed"}}, "telemetry.kind", "at least one value"),
        ({"telemetry": {"altitude_agl_m": 40.0}}, "telemetry.altitude_agl_m", "only used with"),
        ({"telemetry": {"kind": "fixed", "near_lat": 46.8}}, "telemetry.near_lat", "go together"),
        ({"telemetry": {"kind": "fixed", "near_lat": 46.8, "near_lon": 191.0}}, "telemetry.near_lon",
         "[-180, 180]"),
        ({"telemetry": {"kind": "fixed", "near_radius_m": 500.0}}, "telemetry.near_radius_m", "needs near_lat"),
        ({"telemetry": {"near_lat": 46.8, "near_lon": -92.0}}, "telemetry.near_lat", "only used with"),
        ({"health": {"source_timeout_s": -1.0}}, "health.source_timeout_s", "> 0"),
        ({"source": {"kind": "mqtt", "topic": "topicgeo/v1/uav01/pose"}}, "source.topic", "output topics"),
        ({"source": {"kind": "mqtt", "topic": "uav01/in"}, "telemetry": {"kind": "mqtt", "topic": "uav01/in"}},
         "telemetry.topic", "also the frame topic"),
        ({"source": {"kind": "mqtt", "topic": "topicgeo/v1/uav01/telemetry"}, "telemetry": {"kind": "mqtt"}},
         "telemetry.topic", "also the frame topic"),
        ({"bundle_dir": "${TOPICGEO_TEST_UNSET_VAR}/b"}, "bundle_dir", "TOPICGEO_TEST_UNSET_VAR is not set"),
    ],
)
def test_bad_config_names_the_key(tmp_path, monkeypatch, overrides, key, fragment):
    monkeypatch.delenv("TOPICGEO_TEST_UNSET_VAR", raising=False)
    data = base()
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict) and section != "source":
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert fragment in message


def test_a_fixed_position_prior_reaches_the_frames_priors(tmp_path):
    """``telemetry.kind: fixed`` with ``near_*`` (e.g. the mission area): every frame's priors carry the point."""
    from edge_runtime.service.telemetry import fixed_priors

    data = base()
    data["telemetry"] = {"kind": "fixed", "near_lat": 46.8425, "near_lon": -91.9937, "near_radius_m": 2000.0}
    config = load_config(write(tmp_path, data))
    priors = fixed_priors(dataclasses.asdict(config.telemetry))
    assert (priors.near_lat, priors.near_lon, priors.near_radius_m, priors.source) == \
        (46.8425, -91.9937, 2000.0, "fixed")
    assert priors.altitude_agl_m is None


def test_missing_required_key_and_non_mapping(tmp_path):
    data = base()
    del data["vehicle_id"]
    with pytest.raises(ConfigError, match=r": vehicle_id: required key is missing"):
        load_config(write(tmp_path, data))
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_env_default_and_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPICGEO_TEST_HOST", "10.1.2.3")
    monkeypatch.delenv("TOPICGEO_TEST_PORTLESS", raising=False)
    config = load_config(write(tmp_path, base(mqtt={"host": "${TOPICGEO_TEST_HOST}"},
                                              cache_dir="${TOPICGEO_TEST_PORTLESS:-/srv/maps}")))
    assert config.mqtt.host == "10.1.2.3"
    assert config.cache_dir == Path("/srv/maps")


def test_locator_section_is_parsed_strictly(tmp_path):
    from edge_runtime.locator import LocatorConfig

    path = write(tmp_path, base(locator={"shortlist": 4, "backend": {"backend": "onnxruntime", "thread": 2}}))
    with pytest.raises(ConfigError, match=r": locator\.backend\.thread: unknown key.*did you mean 'threads'"):
        load_all(path, LocatorConfig)
    path = write(tmp_path, base(locator={"min_inliers": 2}))
    with pytest.raises(ConfigError, match=r": locator: .*min_inliers >= 4"):
        load_all(path, LocatorConfig)
    config = parse_section(LocatorConfig, {"content_scales": [1.0, 0.25], "shortlist": 3}, "locator")
    assert config.content_scales == (1.0, 0.25) and config.shortlist == 3
    assert config.backend.precision == "auto"  # ONNX Runtime on the CPU: the FP32 graphs
    config = parse_section(LocatorConfig, {"backend": {"precision": "fp16"}}, "locator")
    assert config.backend.precision == "fp16"
    with pytest.raises(ConfigError, match=r"locator\.backend\.precision: must be one of 'auto', 'fp32', 'fp16'"):
        parse_section(LocatorConfig, {"backend": {"precision": "int8"}}, "locator")


def test_the_service_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys\n"
            "import edge_runtime.service.cli, edge_runtime.service.service, edge_runtime.service.broker\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
