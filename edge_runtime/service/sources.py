"""Frame sources: an image folder, a video file, a live camera (OpenCV) and JPEG frames on an MQTT topic.

Every source is opened synchronously by :meth:`FrameSource.open` (so a missing folder, an unreadable video or an
absent camera fails the service start with a message naming it) and then delivers :class:`Frame` records through an
``emit`` callback from its own thread (or from the MQTT network thread). Encoded frames (folder, MQTT) are decoded by
the processing loop, where a corrupt JPEG becomes a status error instead of killing the source.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.service.config import SourceConfig

logger = logging.getLogger(__name__)

JPEG_SUFFIXES = (".jpg", ".jpeg")

#: ``emit(frame) -> bool``: hand a frame to the service; False = the service is stopping.
Emit = Callable[["Frame"], bool]
#: ``report(kind, message, frame_name)``: a problem worth a status message (the source carries on).
Report = Callable[[str, str, "str | None"], None]


class SourceError(RuntimeError):
    """A frame source that cannot be opened or used (names the folder, file, device or topic)."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One frame as delivered by a source.

    Attributes:
        index: 0-based count of frames this source delivered.
        name: file name, ``video#12``, ``camera#3`` or ``<topic>#5``.
        t_wall: ``time.time()`` when the source got the frame (the capture time when nothing better is known).
        t_mono: ``time.monotonic()`` at the same moment (for latency).
        jpeg: encoded JPEG bytes (folder and MQTT sources).
        image_bgr: ``(H, W, 3)`` uint8 BGR pixels (video and camera sources).
        path: the file (folder source).
        properties: MQTT 5 user properties of the message (MQTT source).
    """

    index: int
    name: str
    t_wall: float
    t_mono: float
    jpeg: bytes | None = None
    image_bgr: np.ndarray | None = None
    path: Path | None = None
    properties: dict[str, str] = field(default_factory=dict)


class FrameSource(ABC):
    """Base class: ``open()`` (synchronous), ``start(emit, report)``, ``stop()``.

    Attributes:
        live: frames come at the world's pace (camera, MQTT) rather than from storage.
        finished: set when a non-looping replay has delivered its last frame.
        error: the exception that ended the source thread, if any.
    """

    live = False

    def __init__(self) -> None:
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.delivered = 0
        self.last_frame_mono: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def open(self) -> None:
        """Check and open the source.

        Raises:
            SourceError: naming what cannot be used.
        """

    def describe(self) -> str:
        """One line for logs and status messages."""
        return type(self).__name__

    def start(self, emit: Emit, report: Report) -> None:
        """Start delivering frames."""
        self._thread = threading.Thread(target=self._guarded, args=(emit, report), name=f"source-{self.describe()}",
                                        daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the source to stop without waiting (:meth:`stop` then waits for its thread and releases it)."""
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the source to stop and wait for its thread."""
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._close()

    def _guarded(self, emit: Emit, report: Report) -> None:
        try:
            self._run(emit, report)
        except Exception as exc:
            logger.exception("frame source %s failed", self.describe())
            self.error = exc
            report("source_error", f"{self.describe()}: {exc}", None)

    def _run(self, emit: Emit, report: Report) -> None:  # pragma: no cover - overridden by threaded sources
        raise NotImplementedError

    def _close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Release resources (after the thread ended)."""

    def _deliver(self, emit: Emit, frame: Frame) -> bool:
        self.delivered += 1
        self.last_frame_mono = frame.t_mono
        return emit(frame)

    def _pace(self, t0: float, i: int, rate_fps: float) -> bool:
        """Sleep until frame ``i`` is due; False when stopping."""
        if rate_fps > 0:
            delay = t0 + i / rate_fps - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return False
        return not self._stop.is_set()


class ImageFolderSource(FrameSource):
    """The JPEG files of a folder in name order (EXIF/XMP priors are read by the processing loop)."""

    def __init__(self, folder: Path, rate_fps: float = 0.0, loop: bool = False) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.rate_fps = rate_fps
        self.loop = loop
        self.files: list[Path] = []

    def describe(self) -> str:
        return f"image folder {self.folder}"

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder {self.folder} does not exist")
        self.files = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in JPEG_SUFFIXES)
        if not self.files:
            raise SourceError(f"image folder {self.folder} holds no JPEG file ({', '.join(JPEG_SUFFIXES)})")
        logger.info("image folder %s: %d frames%s", self.folder, len(self.files), " (looping)" if self.loop else "")

    def _run(self, emit: Emit, report: Report) -> None:
        t0 = time.monotonic()
        order = itertools.cycle(self.files) if self.loop else iter(self.files)
        for i, path in enumerate(order):
            if not self._pace(t0, i, self.rate_fps):
                return
            try:
                data = path.read_bytes()
            except OSError as exc:
                report("frame_error", f"cannot read {path}: {exc}", path.name)
                continue
            frame = Frame(i, path.name, time.time(), time.monotonic(), jpeg=data, path=path)
            if not self._deliver(emit, frame):
                return
        self.finished.set()


class VideoFileSource(FrameSource):
    """The frames of a video file OpenCV can read (capture time = read time; no per-frame priors)."""

    def __init__(self, path: Path, rate_fps: float = 0.0, loop: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.rate_fps = rate_fps
        self.loop = loop
        self._cap: Any = None

    def describe(self) -> str:
        return f"video {self.path}"

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"video file {self.path} does not exist")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise SourceError(f"OpenCV cannot open the video file {self.path}")
        ok, _ = cap.read()
        if not ok:
            cap.release()
            raise SourceError(f"video file {self.path} has no readable frame")
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self._cap = cap
        logger.info("video %s: %d frames at %.1f fps", self.path, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
                    cap.get(cv2.CAP_PROP_FPS))

    def _run(self, emit: Emit, report: Report) -> None:
        t0 = time.monotonic()
        for i in itertools.count():
            if not self._pace(t0, i, self.rate_fps):
                return
            ok, image = self._cap.read()
            if not ok:
                if not self.loop:
                    self.finished.set()
                    return
                self._cap.release()
                self._cap = cv2.VideoCapture(str(self.path))
                ok, image = self._cap.read()
                if not ok:
                    raise SourceError(f"video file {self.path} could not be reopened for looping")
            frame = Frame(i, f"video#{i}", time.time(), time.monotonic(), image_bgr=image)
            if not self._deliver(emit, frame):
                return

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


_APIS = {"any": cv2.CAP_ANY, "v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER}


def camera_api(device: int | str, api: str) -> int:
    """The OpenCV capture API for a device: a string containing ``!`` is a GStreamer pipeline.

    Raises:
        SourceError: the API (or GStreamer for a pipeline string) is not compiled into this OpenCV build.
    """
    chosen = api
    if api == "any" and isinstance(device, str) and "!" in device:
        chosen = "gstreamer"
    if chosen != "any" and not cv2.videoio_registry.hasBackend(_APIS[chosen]):
        hint = ""
        if chosen == "gstreamer":
            hint = " (pip opencv-python wheels have no GStreamer; use the system OpenCV, e.g. JetPack's python3-opencv)"
        raise SourceError(f"camera {device!r}: this OpenCV build has no {chosen} capture backend{hint}")
    return _APIS[chosen]


class CameraSource(FrameSource):
    """A live camera through OpenCV: a V4L2 index or device path, or a GStreamer pipeline string.

    A read failure is reported and the camera is reopened after ``reopen_delay_s`` until the service stops.
    """

    live = True

    def __init__(self, config: SourceConfig) -> None:
        super().__init__()
        assert config.device is not None
        self.device: int | str = config.device
        self.config = config
        self.api = camera_api(self.device, config.api)
        self._cap: Any = None

    def describe(self) -> str:
        return f"camera {self.device!r}"

    def _open_capture(self) -> Any:
        cap = cv2.VideoCapture(self.device, self.api)
        if not cap.isOpened():
            cap.release()
            return None
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.config.capture_width),
                            (cv2.CAP_PROP_FRAME_HEIGHT, self.config.capture_height),
                            (cv2.CAP_PROP_FPS, self.config.capture_fps)):
            if value is not None and not cap.set(prop, value):
                logger.warning("camera %r: the driver refused property %d = %s", self.device, prop, value)
        return cap

    def open(self) -> None:
        self._cap = self._open_capture()
        if self._cap is None:
            raise SourceError(f"cannot open camera {self.device!r} (OpenCV API {self.config.api}); check the device "
                              "exists and the service user is in the 'video' group")

    def _run(self, emit: Emit, report: Report) -> None:
        i = 0
        while not self._stop.is_set():
            ok, image = self._cap.read() if self._cap is not None else (False, None)
            if not ok:
                report("source_error", f"camera {self.device!r}: read failed; reopening", None)
                if self._cap is not None:
                    self._cap.release()
                if self._stop.wait(self.config.reopen_delay_s):
                    return
                self._cap = self._open_capture()
                continue
            if not self._deliver(emit, Frame(i, f"camera#{i}", time.time(), time.monotonic(), image_bgr=image)):
                return
            i += 1

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class MqttFrameSource(FrameSource):
    """JPEG frames published on an MQTT topic (one frame per message; the payload is the JPEG file).

    An empty payload is reported as a frame error. Retained frames are stale by definition and are reported and
    ignored. MQTT 5 user properties of the message travel with the frame.
    """

    live = True

    def __init__(self, link: Any, topic: str, qos: int) -> None:
        super().__init__()
        self.link = link
        self.topic = topic
        self.qos = qos
        self._counter = itertools.count()
        self._emit: Emit | None = None
        self._report: Report | None = None

    def describe(self) -> str:
        return f"mqtt topic {self.topic}"

    def open(self) -> None:
        self.link.subscribe(self.topic, self.qos, self._on_message)

    def start(self, emit: Emit, report: Report) -> None:
        self._emit, self._report = emit, report

    def _on_message(self, payload: bytes, retained: bool, properties: dict[str, str]) -> None:
        if self._emit is None or self._report is None or self._stop.is_set():
            return
        i = next(self._counter)
        name = f"{self.topic}#{i}"
        if retained:
            self._report("frame_error", f"retained frame on {self.topic} ignored (stale)", name)
        elif not payload:
            self._report("frame_error", f"empty payload on {self.topic}", name)
        else:
            self._deliver(self._emit, Frame(i, name, time.time(), time.monotonic(), jpeg=bytes(payload),
                                            properties=properties))


def make_source(config: SourceConfig, link: Any = None, frame_topic: str | None = None, qos: int = 0) -> FrameSource:
    """The source a config asks for (not opened yet)."""
    if config.kind == "image_folder":
        assert config.path is not None
        return ImageFolderSource(config.path, config.rate_fps, config.loop)
    if config.kind == "video":
        assert config.path is not None
        return VideoFileSource(config.path, config.rate_fps, config.loop)
    if config.kind == "camera":
        return CameraSource(config)
    if link is None or frame_topic is None:
        raise SourceError("an mqtt frame source needs the MQTT link and a topic")
    return MqttFrameSource(link, frame_topic, qos)
