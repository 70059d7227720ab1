"""Pose and status messages against the shipped JSON Schemas; "no fix" is never a pose; GeoJSON is [lon, lat]."""

from __future__ import annotations

import copy
import json

import jsonschema
import numpy as np
import pytest
from service_double import square_footprint

from edge_runtime.service import payloads
from edge_runtime.types import LocateResult, Priors

LAT, LON = 46.84213, -91.99410  # Brighton Beach, Duluth


@pytest.fixture(scope="module")
def pose_validator():
    schema = payloads.load_schema("pose")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def status_validator():
    schema = payloads.load_schema("status")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def located(**kw) -> LocateResult:
    args = {"ok": True, "map_id": "brighton", "lat": LAT, "lon": LON,
            "footprint_lonlat": square_footprint(LON, LAT, 30.0, 44.2), "heading_deg": -15.5,
            "altitude_agl_m": 40.3, "std_m": (1.2, 1.8), "confidence": 0.81, "inliers": 57,
            "latency_ms": {"encode_query": 12.0, "total": 80.5}, "backend": "onnxruntime", "precision": "fp32"}
    args.update(kw)
    return LocateResult(**args)


def pose(result: LocateResult, **kw) -> dict:
    args = {"vehicle_id": "uav01", "run_id": "0" * 32, "seq": 7,
            "frame": {"name": "DJI_0030.JPG", "index": 6, "source": "image_folder", "width": 512, "height": 288},
            "t_capture": 1466717607.0, "t_capture_source": "exif", "t_publish": 1466717607.25,
            "priors": Priors(40.1, 0.0, 0.1, 44.2, 1466717607.0, source="exif"),
            "latency_ms": {"decode": 3.0, "queue_wait": 1.0, "end_to_end": 90.0}}
    args.update(kw)
    return payloads.pose_payload(result, **args)


def test_pose_validates_and_carries_the_result(pose_validator):
    msg = pose(located())
    pose_validator.validate(msg)
    msg = json.loads(payloads.dumps(msg))  # what a subscriber gets
    pose_validator.validate(msg)
    assert msg["position"] == {"lat": LAT, "lon": LON, "alt_m": 40.3, "alt_datum": "agl", "horizontal_datum": "WGS84"}
    assert msg["heading_deg"] == pytest.approx(344.5)  # normalised to [0, 360)
    assert msg["t_capture"] == "2016-06-23T21:33:27.000000Z"
    assert msg["t_publish"] == "2016-06-23T21:33:27.250000Z"
    assert msg["latency_ms"]["locator"]["total"] == 80.5 and msg["latency_ms"]["end_to_end"] == 90.0
    assert msg["priors"] == {"source": "exif", "altitude_agl_m": 40.1, "roll_deg": 0.0, "pitch_deg": 0.1,
                             "yaw_deg": 44.2}
    assert msg["quality"] == {"confidence": 0.81, "inliers": 57, "source": "vision"}


def test_footprint_is_closed_counter_clockwise_lon_lat(pose_validator):
    fp = square_footprint(LON, LAT, 30.0, 0.0)  # NW, NE, SE, SW: clockwise
    ring = np.array(payloads.footprint_geojson(fp)["coordinates"][0])
    assert ring.shape == (5, 2) and np.array_equal(ring[0], ring[-1])
    x, y = ring[:-1, 0], ring[:-1, 1]
    assert float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) > 0  # counter-clockwise
    assert np.all(np.abs(ring[:, 0] - LON) < 1e-3) and np.all(np.abs(ring[:, 1] - LAT) < 1e-3)  # [lon, lat]
    assert sorted(map(tuple, ring[:-1].tolist())) == sorted(map(tuple, np.round(fp, 9).tolist()))
    with pytest.raises(ValueError, match=r"not \[lon, lat\]"):
        payloads.footprint_geojson(fp[:, ::-1] * [1, 2.0])  # lat/lon swapped and out of range
    with pytest.raises(ValueError, match="zero area"):
        payloads.footprint_geojson(np.array([[LON, LAT]] * 4))
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        payloads.footprint_geojson(fp[:3])


def test_no_fix_is_never_a_pose():
    with pytest.raises(ValueError, match="status, never a pose"):
        pose(LocateResult.failure("no map region matches"))


@pytest.mark.parametrize(("heading", "published"),
                         [(359.9996, 0.0), (-0.0001, 0.0), (359.9994, 359.999), (720.25, 0.25), (-90.0, 270.0),
                          (370.1, 10.1), (-359.999, 0.001)])
def test_heading_is_published_in_0_360_after_rounding(pose_validator, heading, published):
    """A heading a hair under north rounds to 360.0 at the published precision: it is wrapped after rounding."""
    msg = json.loads(payloads.dumps(pose(located(heading_deg=heading))))
    pose_validator.validate(msg)
    assert msg["heading_deg"] == published  # exactly: no float noise from the wrap


def test_non_finite_values_become_null_not_nan(pose_validator):
    msg = pose(located(altitude_agl_m=float("nan"), heading_deg=None))
    assert msg["position"]["alt_m"] is None and msg["heading_deg"] is None
    pose_validator.validate(json.loads(payloads.dumps(msg)))
    with pytest.raises(ValueError):
        payloads.dumps({"x": float("nan")})


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda m: m["footprint"]["coordinates"][0].__setitem__(0, [LAT, LON * 2]), "footprint"),
        (lambda m: m.pop("t_capture"), "required"),
        (lambda m: m.__setitem__("t_capture", "2016-06-23 21:33:27"), "t_capture"),
        (lambda m: m["position"].__setitem__("lat", 91.0), "lat"),
        (lambda m: m["position"].__setitem__("alt_datum", "msl"), "alt_datum"),
        (lambda m: m.__setitem__("seq", 0), "seq"),
        (lambda m: m["quality"].__setitem__("confidence", 1.5), "confidence"),
        (lambda m: m.__setitem__("extra", 1), "additional"),
    ],
)
def test_schema_rejects_broken_poses(pose_validator, mutate, path):
    msg = copy.deepcopy(pose(located()))
    mutate(msg)
    errors = list(pose_validator.iter_errors(msg))
    assert errors, f"schema accepted a pose with a broken {path}"


def test_status_messages_validate(status_validator):
    backend = {"backend": "onnxruntime", "device": "cpu", "precision": "fp32", "degraded": False, "reason": None,
               "requested": "onnxruntime"}
    msgs = [
        payloads.status_payload(vehicle_id="uav01", run_id="a" * 32, online=True, state="running", event="birth",
                                t=1.7e9, backend=backend, counters={"poses": 3, "e2e_ms_median": 12.5}),
        payloads.status_payload(vehicle_id="uav01", run_id="a" * 32, online=True, state="running", event="no_fix",
                                t=1.7e9, message="no map region matches", seq=4, frame="DJI_0031.JPG",
                                detail={"reason": "no map region matches", "confidence": 0.0}),
        payloads.status_payload(vehicle_id="uav01", run_id="a" * 32, online=False, state="offline", event="will",
                                t=None, message="connection lost"),
    ]
    for msg in msgs:
        status_validator.validate(json.loads(payloads.dumps(msg)))
    assert msgs[2]["t"] is None
    bad_will = dict(msgs[2], online=True)
    assert list(status_validator.iter_errors(bad_will))
    bad_online = dict(msgs[0], online=False)  # offline with state running
    assert list(status_validator.iter_errors(bad_online))
    with pytest.raises(ValueError, match="state must be one of"):
        payloads.status_payload(vehicle_id="u", run_id="a" * 32, online=True, state="flying", event="birth", t=0.0)


def test_telemetry_schema_matches_the_parser():
    from edge_runtime.service.telemetry import TELEMETRY_KEYS

    schema = payloads.load_schema("telemetry")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]) == set(TELEMETRY_KEYS)


def test_a_position_prior_travels_from_telemetry_to_the_pose(pose_validator):
    """``near_lat`` / ``near_lon`` / ``near_radius_m`` on the telemetry topic (e.g. the autopilot's last GNSS fix)
    become the frame's position prior, and the pose says it was used; half a point is an error naming the keys."""
    from edge_runtime.service.telemetry import TelemetryError, parse_telemetry

    schema = jsonschema.Draft202012Validator(payloads.load_schema("telemetry"))
    raw = {"altitude_agl_m": 40.0, "near_lat": LAT, "near_lon": LON, "near_radius_m": 300.0}
    schema.validate(raw)
    priors = parse_telemetry(json.dumps(raw).encode(), 1.0).priors
    assert (priors.near_lat, priors.near_lon, priors.near_radius_m) == (LAT, LON, 300.0)
    msg = json.loads(payloads.dumps(pose(located(), priors=priors)))
    pose_validator.validate(msg)
    assert msg["priors"] == {"source": "mqtt", "altitude_agl_m": 40.0, "near_lat": LAT, "near_lon": LON,
                             "near_radius_m": 300.0}
    for half in ({"near_lat": LAT}, {"near_radius_m": 50.0}):
        assert list(schema.iter_errors(half))
        with pytest.raises(TelemetryError, match="near_"):
            parse_telemetry(json.dumps(half).encode(), 1.0)


@pytest.mark.parametrize("sample", [
    {"near_lat": LAT, "near_lon": LON}, {"near_lat": None, "near_lon": LON}, {"near_lat": LAT, "near_lon": None},
    {"near_lat": None, "near_lon": None, "near_radius_m": 50.0}, {"near_radius_m": None}, {"near_lon": None},
    {"near_lat": LAT, "near_lon": LON, "near_radius_m": 0.5}, {"near_lat": 91.0, "near_lon": LON},
    {"near_lat": LAT, "near_lon": LON, "near_radius_m": None}, {"altitude_agl_m": 0}, {"altitude_agl_m": None},
])
def test_telemetry_schema_and_parser_agree_on_a_sample(sample):
    """What the shipped telemetry schema accepts, the parser accepts, and the other way round (null = absent)."""
    from edge_runtime.service.telemetry import TelemetryError, parse_telemetry

    schema_ok = not list(jsonschema.Draft202012Validator(payloads.load_schema("telemetry")).iter_errors(sample))
    try:
        parse_telemetry(json.dumps(sample).encode(), 1.0)
        parser_ok = True
    except TelemetryError:
        parser_ok = False
    assert schema_ok == parser_ok, sample
