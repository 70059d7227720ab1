"""The service config (``vehicle.yaml``): frozen dataclasses filled from YAML and validated on load.

Every mapping in the file is checked against its dataclass: an unknown key, a missing required key, a value of the
wrong type or out of range is a :class:`ConfigError` whose message names the file and the dotted key
(``vehicle.yaml: mqtt.qos.pose: must be 0, 1 or 2, got 3``). Strings may use ``${VAR}`` or ``${VAR:-default}``
(an unset variable without a default is an error naming the key), so the same file works under systemd
(``${STATE_DIRECTORY}``, ``${CACHE_DIRECTORY}``) and elsewhere. Relative paths are relative to the config file.

The ``locator:`` section is kept as a plain mapping here and parsed with :func:`parse_section` into the locator's own
config dataclass by the entry point (so this module does not import the locator). The optional ``mavlink:`` section is
validated with :meth:`edge_runtime.mavlink.MavlinkConfig.from_dict` (that needs no pymavlink; only a started bridge
does); its errors name the file and the dotted key like the rest (``vehicle.yaml: mavlink.baud: ...``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from edge_runtime.mavlink.config import MavlinkConfig, MavlinkConfigError
from edge_runtime.types import Priors, PriorsError

T = TypeVar("T")

#: the service process's exit statuses: clean stop, failure (systemd restarts it), configuration error (it does not)
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

VEHICLE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the dotted key."""


class FieldError(ValueError):
    """Raised by ``__post_init__`` checks: ``key`` is the field (relative to its section) the message is about."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.detail = message


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise FieldError(key, message)


def _positive(value: float | None, key: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    _check(ok, key, f"must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value}")


def _valid_topic(topic: str | None, key: str) -> None:
    if topic is None:
        return
    _check(bool(topic), key, "must not be empty")
    _check(not any(c in topic for c in "+#\x00"), key, f"{topic!r} must not contain wildcards (+, #) or NUL")
    _check(not topic.startswith("$"), key, f"{topic!r}: topics starting with '$' are reserved for the broker")
    _check(not topic.endswith("/") and not topic.startswith("/"), key, f"{topic!r} must not start or end with '/'")


# ------------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class QosConfig:
    """MQTT QoS per topic (deployment.md §3.2: poses 0, status/LWT 1)."""

    pose: int = 0
    status: int = 1
    frames: int = 0
    telemetry: int = 0

    def __post_init__(self) -> None:
        for name in ("pose", "status", "frames", "telemetry"):
            value = getattr(self, name)
            _check(value in (0, 1, 2), name, f"must be 0, 1 or 2, got {value}")


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the broker.

    Attributes:
        enabled: use TLS.
        ca_certs: CA bundle that signed the broker certificate (None = the system trust store).
        certfile: client certificate (mutual TLS). keyfile: its private key.
        insecure: skip the host-name check (test rigs only; the chain is still verified).
    """

    enabled: bool = False
    ca_certs: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        _check(not (self.keyfile and not self.certfile), "keyfile", "needs certfile")
        for name in ("ca_certs", "certfile", "keyfile"):
            path = getattr(self, name)
            _check(path is None or path.is_file(), name, f"{path} does not exist")
            _check(path is None or self.enabled, name, "is set but tls.enabled is false")


@dataclass(frozen=True)
class MqttConfig:
    """Broker connection and topics.

    Attributes:
        host, port: the broker. protocol: ``v5`` (MQTT 5) or ``v311`` (MQTT 3.1.1).
        client_id: default ``topicgeo-edge-<vehicle_id>``. keepalive_s: MQTT keep-alive.
        topic_prefix: topics are ``<prefix>/<vehicle_id>/{pose,status,frame,telemetry}``.
        qos: per topic. pose_expiry_s: MQTT 5 message expiry of poses; also how long a pose may wait in the outbox.
        status_interval_s: retained status heartbeat period.
        username: broker user; the password comes from the environment variable ``password_env`` (systemd
            ``EnvironmentFile=``) or from ``password_file`` (first line), never from this file.
        tls: TLS settings. reconnect_min_s / reconnect_max_s: exponential reconnect back-off.
        outbox_max: messages kept while disconnected (oldest dropped and counted). will_delay_s: MQTT 5 will delay.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    protocol: Literal["v5", "v311"] = "v5"
    client_id: str | None = None
    keepalive_s: int = 30
    topic_prefix: str = "topicgeo/v1"
    qos: QosConfig = field(default_factory=QosConfig)
    pose_expiry_s: int = 2
    status_interval_s: float = 10.0
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    tls: TlsConfig = field(default_factory=TlsConfig)
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 4.0  # a broker back for > 5 s must see the vehicle again within 5 s
    outbox_max: int = 100
    will_delay_s: int = 0

    def __post_init__(self) -> None:
        _check(bool(self.host), "host", "must not be empty")
        _check(1 <= self.port <= 65535, "port", f"must be in 1..65535, got {self.port}")
        _check(5 <= self.keepalive_s <= 3600, "keepalive_s", f"must be in 5..3600 s, got {self.keepalive_s}")
        _valid_topic(self.topic_prefix, "topic_prefix")
        _check(self.pose_expiry_s >= 0, "pose_expiry_s", f"must be >= 0 (0 = no expiry), got {self.pose_expiry_s}")
        _positive(self.status_interval_s, "status_interval_s")
        _positive(self.reconnect_min_s, "reconnect_min_s")
        _positive(self.reconnect_max_s, "reconnect_max_s")
        _check(self.reconnect_max_s >= self.reconnect_min_s, "reconnect_max_s", "must be >= reconnect_min_s")
        _check(self.outbox_max >= 1, "outbox_max", f"must be >= 1, got {self.outbox_max}")
        _check(self.will_delay_s >= 0, "will_delay_s", "must be >= 0")
        _check(not (self.password_env and self.password_file), "password_env", "give password_env or password_file")
        _check(self.username is not None or not (self.password_env or self.password_file), "username",
               "a password is configured without a username")
        _check(self.password_file is None or self.password_file.is_file(), "password_file",
               f"{self.password_file} does not exist")
        _check(self.client_id is None or 0 < len(self.client_id) <= 128, "client_id", "must be 1..128 characters")


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from.

    Attributes:
        kind: ``image_folder`` (JPEGs in name order), ``video`` (a file OpenCV reads), ``camera`` (live, OpenCV) or
            ``mqtt`` (JPEG payloads on ``topic``).
        path: the folder or video file. loop: restart at the end (otherwise the service exits 0 when done).
        rate_fps: pace the folder/video replay at this rate (0 = as fast as frames can be read).
        device: camera: a V4L2 index (``0`` = /dev/video0), a device path or a GStreamer pipeline string.
        api: camera: OpenCV capture API (``any``, ``v4l2``, ``gstreamer``).
        capture_width, capture_height, capture_fps: camera: requested mode (None = driver default).
        reopen_delay_s: camera: wait before reopening after a read failure.
        topic: mqtt: the frame topic (default ``<prefix>/<vehicle_id>/frame``).
        frame_size: ``[width, height]`` every frame must have; others are rejected with a status error.
    """

    kind: Literal["image_folder", "video", "camera", "mqtt"]
    path: Path | None = None
    loop: bool = False
    rate_fps: float = 0.0
    device: int | str | None = None
    api: Literal["any", "v4l2", "gstreamer"] = "any"
    capture_width: int | None = None
    capture_height: int | None = None
    capture_fps: float | None = None
    reopen_delay_s: float = 2.0
    topic: str | None = None
    frame_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind in ("image_folder", "video"):
            _check(self.path is not None, "path", f"is required for source kind {self.kind!r}")
            assert self.path is not None
            if self.kind == "image_folder":
                _check(self.path.is_dir(), "path", f"{self.path} is not a folder")
            else:
                _check(self.path.is_file(), "path", f"{self.path} does not exist")
        else:
            _check(self.path is None, "path", f"is not used by source kind {self.kind!r}")
            _check(not self.loop, "loop", f"is not used by source kind {self.kind!r}")
        if self.kind == "camera":
            _check(self.device is not None, "device", "is required for source kind 'camera'")
            _check(not (isinstance(self.device, int) and self.device < 0), "device", "a V4L2 index must be >= 0")
        else:
            _check(self.device is None, "device", f"is not used by source kind {self.kind!r}")
        _check(self.kind == "mqtt" or self.topic is None, "topic", f"is not used by source kind {self.kind!r}")
        _valid_topic(self.topic, "topic")
        _positive(self.rate_fps, "rate_fps", allow_zero=True)
        _positive(self.capture_fps, "capture_fps")
        _positive(self.reopen_delay_s, "reopen_delay_s")
        for name in ("capture_width", "capture_height"):
            value = getattr(self, name)
            _check(value is None or value > 0, name, f"must be > 0, got {value}")
        if self.frame_size is not None:
            _check(all(v > 0 for v in self.frame_size), "frame_size", f"must be positive, got {self.frame_size}")


@dataclass(frozen=True)
class TelemetryConfig:
    """Where the priors (altitude above ground, attitude, capture time) come from.

    Attributes:
        kind: ``exif`` (the frame's EXIF/XMP: image_folder and mqtt sources), ``mqtt`` (JSON samples on ``topic``,
            see ``edge_runtime/schemas/telemetry.schema.json``), ``mavlink`` (the autopilot's altitude above ground
            and attitude at the frame's capture time, from the ``mavlink:`` bridge), ``fixed`` (the values below)
            or ``none``.
        topic: mqtt: default ``<prefix>/<vehicle_id>/telemetry``.
        max_age_s: mqtt: a sample older than this when a frame arrives is not used (the frame gets no priors).
        exif_utc_offset_h: hours to subtract from EXIF times that carry no offset (DJI writes local time).
        altitude_agl_m, roll_deg, pitch_deg, yaw_deg: fixed priors.
        near_lat, near_lon, near_radius_m: fixed position prior (e.g. the mission area: the maps within the radius of
            that point are searched first, then every map; see ``Priors``).
    """

    kind: Literal["exif", "mqtt", "mavlink", "fixed", "none"] = "none"
    topic: str | None = None
    max_age_s: float = 1.0
    exif_utc_offset_h: float = 0.0
    altitude_agl_m: float | None = None
    roll_deg: float | None = None
    pitch_deg: float | None = None
    yaw_deg: float | None = None
    near_lat: float | None = None
    near_lon: float | None = None
    near_radius_m: float | None = None

    def __post_init__(self) -> None:
        _check(self.kind == "mqtt" or self.topic is None, "topic", f"is not used by telemetry kind {self.kind!r}")
        _valid_topic(self.topic, "topic")
        _positive(self.max_age_s, "max_age_s")
        _check(-14 <= self.exif_utc_offset_h <= 14, "exif_utc_offset_h", "must be in -14..14 hours")
        fixed = ("altitude_agl_m", "roll_deg", "pitch_deg", "yaw_deg", "near_lat", "near_lon", "near_radius_m")
        if self.kind == "fixed":
            _check(any(getattr(self, n) is not None for n in fixed), "kind", "'fixed' needs at least one value")
        else:
            for name in fixed:
                _check(getattr(self, name) is None, name, "is only used with telemetry kind 'fixed'")
        _positive(self.altitude_agl_m, "altitude_agl_m")
        try:  # the position prior's own checks (both coordinates or neither, ranges, a positive radius)
            Priors(near_lat=self.near_lat, near_lon=self.near_lon, near_radius_m=self.near_radius_m)
        except PriorsError as exc:
            raise FieldError(exc.field, str(exc)) from exc


@dataclass(frozen=True)
class CameraConfig:
    """Intrinsics handed to the locator with each frame (None of them = the locator's default camera).

    Attributes:
        info: a ROS camera_info YAML (read at start); rescaled to the frame size when the frame is a uniform resize
            of it.
        from_exif: build the intrinsics from each frame's EXIF/XMP (``calibration.exif.camera_from_metadata``).
        sensor_width_mm, use_35mm_equivalent: focal-length source for ``from_exif`` (see calibration.exif).
    """

    info: Path | None = None
    from_exif: bool = False
    sensor_width_mm: float | None = None
    use_35mm_equivalent: bool = False

    def __post_init__(self) -> None:
        _check(not (self.info and self.from_exif), "from_exif", "give either info or from_exif")
        _positive(self.sensor_width_mm, "sensor_width_mm")
        _check(self.from_exif or (self.sensor_width_mm is None and not self.use_35mm_equivalent), "from_exif",
               "sensor_width_mm / use_35mm_equivalent need from_exif: true")


@dataclass(frozen=True)
class QueueConfig:
    """The frame queue between the source and the processing loop.

    Attributes:
        maxsize: frames held. mode: ``latest`` drops the oldest frame when full (live sources; drops are counted),
            ``block`` makes the source wait (lossless replay of a folder or a file).
    """

    maxsize: int = 1
    mode: Literal["latest", "block"] = "latest"

    def __post_init__(self) -> None:
        _check(1 <= self.maxsize <= 1000, "maxsize", f"must be in 1..1000, got {self.maxsize}")


@dataclass(frozen=True)
class HealthConfig:
    """When the pipeline counts as unhealthy (no more watchdog pings).

    Attributes:
        max_consecutive_errors: locator failures in a row (exceptions, not "no fix") before unhealthy.
        source_timeout_s: no frame for this long from a live source = unhealthy (None = never).
        unhealthy_exit_s: exit with status 1 after being unhealthy this long (None = wait for the watchdog).
    """

    max_consecutive_errors: int = 5
    source_timeout_s: float | None = None
    unhealthy_exit_s: float | None = 60.0

    def __post_init__(self) -> None:
        _check(self.max_consecutive_errors >= 1, "max_consecutive_errors", "must be >= 1")
        _positive(self.source_timeout_s, "source_timeout_s")
        _positive(self.unhealthy_exit_s, "unhealthy_exit_s")


@dataclass(frozen=True)
class ServiceConfig:
    """The whole ``vehicle.yaml``.

    Attributes:
        vehicle_id: lowercase ``[a-z0-9_-]``, used in topics. bundle_dir, cache_dir: the exported model bundle and
            the map cache built with it (both verified when opened).
        source, telemetry, camera, queue, health, mqtt: sections above.
        mavlink: the optional MAVLink bridge to the autopilot (docs/mavlink.md); None = no bridge.
        startup_timeout_s: announced to systemd (``EXTEND_TIMEOUT_USEC``) while the bundle opens and warms up.
        log_level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
        locator: options of the locator's config dataclass (parsed by the entry point).
    """

    vehicle_id: str
    bundle_dir: Path
    cache_dir: Path
    source: SourceConfig
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    startup_timeout_s: float = 600.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    locator: dict[str, Any] = field(default_factory=dict)
    mavlink: MavlinkConfig | None = None

    def __post_init__(self) -> None:
        _check(bool(VEHICLE_ID_RE.match(self.vehicle_id)), "vehicle_id",
               f"{self.vehicle_id!r} must be 1-64 characters of [a-z0-9_-] starting with a letter or digit")
        _positive(self.startup_timeout_s, "startup_timeout_s")
        jpeg_sources = ("image_folder", "mqtt")
        _check(self.telemetry.kind != "mavlink" or (self.mavlink is not None and self.mavlink.enabled),
               "telemetry.kind", "'mavlink' needs an enabled mavlink: section (the bridge to the autopilot)")
        _check(self.mavlink is None or self.mavlink.position_prior_radius_m is None or self.telemetry.kind == "mavlink",
               "mavlink.position_prior_radius_m", "is only used with telemetry.kind 'mavlink' (the priors from the "
               "autopilot)")
        _check(self.telemetry.kind != "exif" or self.source.kind in jpeg_sources, "telemetry.kind",
               f"'exif' needs a JPEG source (image_folder or mqtt), the source is {self.source.kind!r}")
        _check(not self.camera.from_exif or self.source.kind == "image_folder", "camera.from_exif",
               f"needs the image_folder source, the source is {self.source.kind!r}")
        _check(self.queue.mode == "latest" or self.source.kind in ("image_folder", "video"), "queue.mode",
               f"'block' is for replaying files; a live {self.source.kind!r} source needs 'latest'")
        topics = [self.frame_topic, self.telemetry_topic] if self.source.kind == "mqtt" else [self.telemetry_topic]
        own = {self.topic("pose"), self.topic("status")}
        for key, topic in zip(("source.topic", "telemetry.topic"), topics, strict=False):
            _check(topic is None or topic not in own, key, f"{topic!r} is one of the service's output topics")
        # one link holds one handler per topic: the later subscription would silently replace the frame source's
        _check(self.telemetry_topic is None or self.telemetry_topic != self.frame_topic, "telemetry.topic",
               f"{self.telemetry_topic!r} is also the frame topic (source.topic); telemetry needs its own topic")

    def topic(self, leaf: str) -> str:
        """``<prefix>/<vehicle_id>/<leaf>``."""
        return f"{self.mqtt.topic_prefix}/{self.vehicle_id}/{leaf}"

    @property
    def frame_topic(self) -> str | None:
        """The MQTT frame topic (mqtt sources only)."""
        if self.source.kind != "mqtt":
            return None
        return self.source.topic or self.topic("frame")

    @property
    def telemetry_topic(self) -> str | None:
        """The MQTT telemetry topic (mqtt telemetry only)."""
        if self.telemetry.kind != "mqtt":
            return None
        return self.telemetry.topic or self.topic("telemetry")

    @property
    def client_id(self) -> str:
        """The MQTT client id."""
        return self.mqtt.client_id or f"topicgeo-edge-{self.vehicle_id}"


# ------------------------------------------------------------------------------------------------- parsing
def load_config(path: str | os.PathLike[str]) -> ServiceConfig:
    """Read and validate a service config file.

    Raises:
        ConfigError: the file is missing, not YAML, or any key is unknown, missing or invalid (names the key).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return parse_section(ServiceConfig, raw, "", base_dir=p.parent.resolve(), source=str(p))


def parse_section(
    cls: type[T], data: Any, key: str, *, base_dir: Path | None = None, source: str = "<config>"
) -> T:
    """Build the dataclass ``cls`` from a mapping, checking every key and value.

    Args:
        cls: a dataclass type (nested dataclass fields are parsed recursively).
        data: the mapping read from YAML (None = all defaults).
        key: dotted key of this section in the file (``""`` for the top level), used in messages.
        base_dir: folder relative paths are resolved against (default: the current directory).
        source: name of the file, used in messages.

    Raises:
        ConfigError: naming ``source`` and the dotted key.
    """
    return _Parser(base_dir or Path.cwd(), source).dataclass(cls, {} if data is None else data, key)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


class _Parser:
    def __init__(self, base_dir: Path, source: str) -> None:
        self.base_dir = base_dir
        self.source = source

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key or '<top level>'}: {message}")

    def dataclass(self, cls: type[T], data: Any, key: str) -> T:
        if not isinstance(data, Mapping):
            raise self.error(key, f"must be a mapping of keys, got {type(data).__name__} {data!r}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        hints = typing.get_type_hints(cls)
        for name in data:
            if name not in fields:
                close = difflib.get_close_matches(str(name), list(fields), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(_join(key, str(name)), f"unknown key (known keys: {', '.join(fields)}){hint}")
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            sub = _join(key, name)
            if name in data:
                kwargs[name] = self.value(hints[name], data[name], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise self.error(sub, "required key is missing")
        try:
            return cls(**kwargs)
        except FieldError as exc:
            raise self.error(_join(key, exc.key), exc.detail) from exc
        except (ValueError, TypeError) as exc:
            raise self.error(key, str(exc)) from exc

    def value(self, tp: Any, value: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if value is None:
                if type(None) in args:
                    return None
                raise self.error(key, "must not be empty (null)")
            arms = [a for a in args if a is not type(None)]
            if len(arms) == 1:
                return self.value(arms[0], value, key)
            for arm in arms:
                try:
                    return self.value(arm, value, key)
                except ConfigError:
                    continue
            raise self.error(key, f"must be {' or '.join(_type_name(a) for a in arms)}, got {value!r}")
        if value is None:
            raise self.error(key, f"must be {_type_name(tp)}, got null")
        if origin is Literal:
            if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
                raise self.error(key, f"must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
            return value
        if tp is MavlinkConfig:
            return self.mavlink(value, key)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, key)  # type: ignore[arg-type]
        if tp is Any:
            return value
        if tp is bool:
            if not isinstance(value, bool):
                raise self.error(key, f"must be true or false, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(key, f"must be an integer, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise self.error(key, f"must be a finite number, got {value!r}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise self.error(key, f"must be a string, got {value!r}")
            return self.expand(value, key)
        if tp is Path:
            if not isinstance(value, str) or not value:
                raise self.error(key, f"must be a path (string), got {value!r}")
            p = Path(self.expand(value, key)).expanduser()
            return p if p.is_absolute() else (self.base_dir / p)
        if origin is tuple:
            if not isinstance(value, list | tuple):
                raise self.error(key, f"must be a list, got {value!r}")
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(self.value(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise self.error(key, f"must be a list of {len(args)} values, got {len(value)}")
            return tuple(self.value(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        if origin is dict:
            if not isinstance(value, Mapping):
                raise self.error(key, f"must be a mapping, got {value!r}")
            return dict(value)
        raise self.error(key, f"unsupported field type {tp!r}")

    def mavlink(self, data: Any, key: str) -> MavlinkConfig:
        """The ``mavlink:`` section through ``MavlinkConfig.from_dict`` (``${VAR}`` expanded in its strings)."""
        if not isinstance(data, Mapping):
            raise self.error(key, f"must be a mapping of keys, got {type(data).__name__} {data!r}")
        values = {k: self.expand(v, _join(key, str(k))) if isinstance(v, str) else v for k, v in data.items()}
        try:
            return MavlinkConfig.from_dict(values)
        except MavlinkConfigError as exc:
            raise self.error(_join(key, exc.key), exc.detail) from exc
        except (ValueError, TypeError) as exc:
            raise self.error(key, str(exc)) from exc

    def expand(self, text: str, key: str) -> str:
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise self.error(key, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")

        return _ENV_RE.sub(sub, text)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return "a list"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))
