"""Property-based tests (hypothesis) of every parser that reads input from outside the vehicle's own code: the frame
decoder, the MQTT frame source, EXIF/XMP priors from JPEG bytes, the MQTT telemetry parser and the config loader.

The property is the same everywhere: any input either parses into a well-formed value or raises the module's own
error type with a message naming the input (frame name, topic, file, key); nothing else escapes, and the service
carries on (its processing call returns, the bad input is counted, the pipeline stays healthy). Inputs are mutations
of the real Brighton Beach drone frames (``tests/data/service/frames``: EXIF, DJI XMP, JPEG tables and SOF) and of a
valid config, plus arbitrary bytes and JSON. ``max_examples`` is bounded and the examples are derandomised, so the
file runs in well under a minute and a failure reproduces exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from service_double import DoubleLocator, DoubleLocatorConfig

from calibration.exif import jpeg_segments
from edge_runtime.locator import LocatorConfig
from edge_runtime.service.cli import load_all
from edge_runtime.service.config import ConfigError, ServiceConfig, load_config
from edge_runtime.service.sdnotify import Notifier
from edge_runtime.service.service import MAX_FRAME_PIXELS, FrameError, Service, decode_frame
from edge_runtime.service.sources import Frame, MqttFrameSource
from edge_runtime.service.telemetry import (
    TELEMETRY_KEYS,
    TelemetryError,
    TelemetryStore,
    parse_telemetry,
    priors_from_jpeg_bytes,
)
from edge_runtime.types import Priors

FRAMES = Path(__file__).parent / "data" / "service" / "frames"
JPEGS = [p.read_bytes() for p in sorted(FRAMES.glob("*.JPG"))]
SOF_MARKERS = {0xC0, 0xC1, 0xC2}


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _regions(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges worth mutating: EXIF IFDs, the XMP packet, the tables and SOF, the start of the scan."""
    segs = jpeg_segments(data)
    exif = next(s for s in segs if s.marker == 0xE1)
    xmp = [s for s in segs if s.marker == 0xE1][1]
    tables_start = xmp.end
    scan = segs[-1].end
    return [(exif.start, exif.start + 2048), (xmp.start, xmp.end), (tables_start, scan + 64), (0, len(data))]


REGIONS = [_regions(d) for d in JPEGS]


@st.composite
def mutated_jpegs(draw: st.DrawFn) -> bytes:
    """A real frame with 1-4 mutations (byte xor, truncation, insertion, deletion, forged SOF size)."""
    i = draw(st.integers(0, len(JPEGS) - 1))
    data = bytearray(JPEGS[i])
    for _ in range(draw(st.integers(1, 4))):
        lo, hi = draw(st.sampled_from(REGIONS[i]))
        hi = min(hi, len(data))
        if hi <= lo:
            lo, hi = 0, len(data)
        kind = draw(st.sampled_from(["xor", "xor", "truncate", "insert", "delete", "sof"]))
        pos = draw(st.integers(lo, max(lo, hi - 1)))
        if kind == "xor" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "sof":
            try:
                sof = next(s for s in jpeg_segments(bytes(data)) if s.marker in SOF_MARKERS)
            except (ValueError, StopIteration):
                continue
            at = sof.start + 5  # marker (2) + length (2) + precision (1)
            data[at : at + 4] = draw(st.integers(0, 65535)).to_bytes(2, "big") + \
                draw(st.integers(0, 65535)).to_bytes(2, "big")
    return bytes(data)


def _frame(data: bytes, name: str = "uav/frame#7") -> Frame:
    return Frame(7, name, 1.7e9, 0.0, jpeg=data)


# ------------------------------------------------------------------------------------------------- frame decoder
@_settings(250)
@given(data=st.one_of(mutated_jpegs(), st.binary(max_size=512), st.binary(max_size=64).map(lambda b: b"\xff\xd8" + b)))
@example(data=b"")
@example(data=b"\xff\xd8\xff\xd9")
def test_frame_decoder_returns_pixels_or_a_frame_error_naming_the_frame(data):
    try:
        image = decode_frame(_frame(data))
    except FrameError as exc:
        assert str(exc).startswith("uav/frame#7: "), str(exc)
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert 0 < image.shape[0] * image.shape[1] <= MAX_FRAME_PIXELS


@pytest.mark.parametrize(("width", "height"), [(20000, 20000), (65000, 65000), (65000, 8000)])
def test_a_forged_frame_header_is_refused_before_decoding(width, height):
    """A header claiming 20000 x 20000 px used to make OpenCV allocate 1.2 GB and decode grey for 8 s, and one above
    OpenCV's own limit raised cv2.error out of the processing loop (the service died)."""
    data = bytearray(JPEGS[0])
    sof = next(s for s in jpeg_segments(bytes(data)) if s.marker in SOF_MARKERS)
    data[sof.start + 5 : sof.start + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    with pytest.raises(FrameError, match=rf"^uav/frame#7: .*{width}x{height}"):
        decode_frame(_frame(bytes(data)))


def test_the_expected_size_is_checked_from_the_header():
    with pytest.raises(FrameError, match=r"unexpected frame size 512x288, expected 640x480"):
        decode_frame(_frame(JPEGS[0]), expected_size=(640, 480))
    assert decode_frame(_frame(JPEGS[0]), expected_size=(512, 288)).shape == (288, 512, 3)


# ------------------------------------------------------------------------------------------- MQTT frame source
class _Link:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def subscribe(self, topic: str, qos: int, handler: Any) -> None:
        self.handlers[topic] = handler


@_settings(150)
@given(payload=st.one_of(st.binary(max_size=256), mutated_jpegs()), retained=st.booleans(),
       props=st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3))
def test_mqtt_frame_source_gives_exactly_one_outcome_per_message(payload, retained, props):
    link = _Link()
    source = MqttFrameSource(link, "topicgeo/v1/uav/frame", 0)
    source.open()
    emitted: list[Frame] = []
    reports: list[tuple[str, str, str | None]] = []
    source.start(lambda f: emitted.append(f) or True, lambda k, m, n: reports.append((k, m, n)))
    link.handlers["topicgeo/v1/uav/frame"](payload, retained, props)
    assert len(emitted) + len(reports) == 1
    if reports:
        kind, message, name = reports[0]
        assert kind == "frame_error" and "topicgeo/v1/uav/frame" in message and name == "topicgeo/v1/uav/frame#0"
        assert retained or not payload
    else:
        assert emitted[0].jpeg == payload and emitted[0].properties == props and not retained


# ------------------------------------------------------------------------------------------- EXIF / XMP priors
@_settings(200)
@given(data=mutated_jpegs())
def test_exif_priors_from_bytes_are_priors_or_a_telemetry_error(data):
    try:
        priors = priors_from_jpeg_bytes(data, "uav/frame#3", 0.0)
    except TelemetryError as exc:
        assert str(exc).startswith("uav/frame#3: "), str(exc)
        return
    assert isinstance(priors, Priors) and priors.source == "exif"
    for value in (priors.altitude_agl_m, priors.roll_deg, priors.pitch_deg, priors.yaw_deg, priors.capture_time):
        assert value is None or math.isfinite(value)


# ------------------------------------------------------------------------------------------------ MQTT telemetry
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**400), max_value=10**400),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
telemetry_objects = st.dictionaries(st.sampled_from([*TELEMETRY_KEYS, "altitude", "extra"]) | st.text(max_size=6),
                                    json_values, max_size=6)


@_settings(300)
@given(payload=st.one_of(
    st.binary(max_size=200),
    telemetry_objects.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.just(b"9" * 5000),  # more digits than Python's int parser accepts
))
@example(payload=b'{"altitude_agl_m": ' + b"1" * 400 + b"}")
@example(payload=b'{"yaw_deg": NaN}')
@example(payload=b"\xff\xfe{")
def test_telemetry_parser_returns_a_sample_or_a_telemetry_error(payload):
    try:
        sample = parse_telemetry(payload, 5.0)
    except TelemetryError as exc:
        assert str(exc).startswith("telemetry") or str(exc).startswith("empty telemetry"), str(exc)
        return
    p = sample.priors
    assert p.source == "mqtt" and sample.received_mono == 5.0
    for value in (p.altitude_agl_m, p.roll_deg, p.pitch_deg, p.yaw_deg, p.frame_gsd_m, sample.t):
        assert value is None or math.isfinite(value)
    assert p.altitude_agl_m is None or p.altitude_agl_m > 0


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False)


@_settings(100)
@given(values=st.fixed_dictionaries({}, optional={
    "schema": st.just("topicgeo-edge/telemetry/1"), "t": finite, "altitude_agl_m": positive, "roll_deg": finite,
    "pitch_deg": finite, "yaw_deg": finite, "frame_gsd_m": positive}))
def test_every_valid_telemetry_sample_is_accepted_and_kept_exactly(values):
    store = TelemetryStore(max_age_s=10.0)
    store.update(b'{"altitude_agl_m": 12.5}')
    with pytest.raises(TelemetryError):
        store.update(b'{"altitude_agl_m": -1}')
    assert store.latest().priors.altitude_agl_m == 12.5  # a bad sample does not replace the last good one
    sample = store.update(json.dumps(values).encode())
    p = sample.priors
    got = {"t": sample.t, "altitude_agl_m": p.altitude_agl_m, "roll_deg": p.roll_deg, "pitch_deg": p.pitch_deg,
           "yaw_deg": p.yaw_deg, "frame_gsd_m": p.frame_gsd_m}
    assert got == {k: values.get(k) for k in got}
    assert store.latest() is sample


# --------------------------------------------------------------------------------------- the service carries on
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz_service")
    for name in ("bundle", "cache"):
        (tmp / name).mkdir()
    raw = {"vehicle_id": "fz", "bundle_dir": str(tmp / "bundle"), "cache_dir": str(tmp / "cache"),
           "source": {"kind": "mqtt", "frame_size": [512, 288]}, "telemetry": {"kind": "exif"},
           "mqtt": {"port": 1, "outbox_max": 5}}
    path = tmp / "vehicle.yaml"
    path.write_text(yaml.safe_dump(raw))
    svc = Service(load_config(path), DoubleLocator, DoubleLocatorConfig(), notifier=Notifier(""))
    svc.locator = DoubleLocator.open(tmp / "bundle", tmp / "cache", DoubleLocatorConfig())
    svc.locator.warmup()
    return svc  # never started: poses go to the (bounded) outbox of a link that is not connected


@_settings(150)
@given(data=st.one_of(mutated_jpegs(), st.binary(max_size=300)))
def test_the_processing_loop_survives_any_payload_and_counts_it(service, data):
    keys = ("processed", "frame_error", "telemetry_error", "locate_error")
    before = {k: service.counters[k] for k in keys}
    result = service.process(_frame(data, name=f"topicgeo/v1/fz/frame#{service.seq}"))
    delta = {k: service.counters[k] - before[k] for k in keys}
    assert sum(delta.values()) == 1, delta  # exactly one outcome per frame
    assert delta["locate_error"] == 0 and service.consecutive_errors == 0
    assert (result is not None) == (delta["processed"] == 1)
    assert service._check_health(0.0)  # bad input never makes the pipeline unhealthy
    assert service.link.outbox_len <= 5


# ------------------------------------------------------------------------------------------------- config loader
def _valid_config(tmp: Path) -> dict[str, Any]:
    for name in ("bundle", "cache"):
        (tmp / name).mkdir(exist_ok=True)
    return {
        "vehicle_id": "uav01", "bundle_dir": "bundle", "cache_dir": "cache",
        "source": {"kind": "image_folder", "path": str(FRAMES), "rate_fps": 5.0, "frame_size": [512, 288]},
        "telemetry": {"kind": "exif", "exif_utc_offset_h": -5},
        "queue": {"maxsize": 2, "mode": "block"},
        "health": {"max_consecutive_errors": 5, "source_timeout_s": 10, "unhealthy_exit_s": 60},
        "mqtt": {"host": "127.0.0.1", "port": 1883, "protocol": "v5", "qos": {"pose": 0, "status": 1},
                 "pose_expiry_s": 2, "reconnect_min_s": 0.5, "reconnect_max_s": 4, "outbox_max": 100,
                 "tls": {"enabled": False}},
        "locator": {"min_inliers": 12, "backend": {"backend": "onnxruntime", "device": "cpu"}},
    }


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    return out


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz_config")
    _valid_config(tmp)
    return tmp


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=10) |
    st.sampled_from(["${NOPE_UNSET_VAR}", "${HOME:-x}", "\x00", "", "/", "-1", "1e400", "latest", "v5"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


@_settings(250)
@given(data=st.data())
def test_config_loader_accepts_or_names_the_key(config_dir, data):
    raw = _valid_config(config_dir)
    paths = _paths(raw)
    op = data.draw(st.sampled_from(["replace", "add", "delete"]))
    path = data.draw(st.sampled_from(paths))
    parent = raw
    for k in path[:-1]:
        parent = parent[k]
    added = None
    if op == "replace":
        parent[path[-1]] = data.draw(yaml_values)
    elif op == "delete":
        del parent[path[-1]]
    else:
        target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else parent
        added = data.draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
        if added in target:
            return
        target[added] = data.draw(yaml_values)
        added = ".".join(str(k) for k in (*path[:-1], *([path[-1]] if target is not parent else []), added))
    file = config_dir / "vehicle.yaml"
    file.write_text(yaml.safe_dump(raw, allow_unicode=True))
    try:
        config, _ = load_all(file, LocatorConfig)  # what edge-runtime does: the locator section is checked too
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{file}: ") and len(message) > len(f"{file}: ") + 3, message
        if added is not None:
            assert f": {added}: unknown key" in message, (added, message)
        return
    assert isinstance(config, ServiceConfig) and added is None


@_settings(150)
@given(text=st.text(max_size=300) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
@example(text="{")
@example(text="- a\n- b\n")
@example(text="vehicle_id: [unclosed")
@example(text="a: &x [*x]")
def test_config_loader_on_arbitrary_text(config_dir, text):
    file = config_dir / "arbitrary.yaml"
    file.write_text(text, encoding="utf-8")
    try:
        load_config(file)
    except ConfigError as exc:
        assert str(exc).startswith(str(file)), str(exc)
    else:  # only a complete, valid config can load; arbitrary text never is one
        pytest.fail(f"arbitrary text loaded as a config: {text!r}")
