"""``edge-runtime --config vehicle.yaml``: the onboard service entry point.

Exit status: 0 after a clean stop (SIGTERM/SIGINT, or a non-looping replay that ended), 1 when the service failed
(start-up error, pipeline unhealthy), 2 when the config is invalid (the systemd unit does not restart on 2:
``RestartPreventExitStatus=2``). ``--check`` validates the config (including the ``locator:`` section) and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_runtime.service.config import (
    EXIT_CONFIG,
    EXIT_OK,
    ConfigError,
    ServiceConfig,
    load_config,
    parse_section,
)

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message`` lines: journald maps the ``<N>`` prefix to the syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        """One line per record (tracebacks continue on following lines)."""
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {super().format(record)}"


def configure_logging(level: str) -> None:
    """Log to stderr; journald-style priorities when started by systemd (``JOURNAL_STREAM`` is set)."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("edge_runtime.service.mqtt.paho").setLevel(max(logging.INFO, root.level))
    # calibration.exif notes every frame's stored/captured size and intrinsics at INFO: per frame, that floods the
    # journal; its warnings and errors still show
    logging.getLogger("calibration").setLevel(logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-runtime`` argument parser."""
    parser = argparse.ArgumentParser(prog="edge-runtime", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", required=True, type=Path, help="service config (YAML), e.g. vehicle.yaml")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override log_level")
    return parser


def load_all(path: Path, locator_config_type: Any) -> tuple[ServiceConfig, Any]:
    """The service config and the parsed ``locator:`` section.

    Raises:
        ConfigError: naming the file and the key.
    """
    config = load_config(path)
    locator_config = parse_section(locator_config_type, config.locator, "locator", base_dir=path.parent.resolve(),
                                   source=str(path))
    return config, locator_config


def missing_files(config: ServiceConfig) -> list[str]:
    """What the service would fail to open at start (``--check``): the bundle, the map cache, the camera_info YAML.
    Their contents are verified when the service opens them (hashes), not here."""
    out = []
    for key, folder, writer in (("bundle_dir", config.bundle_dir, "edge-export --out"),
                                ("cache_dir", config.cache_dir, "edge-maps build --out")):
        if not (Path(folder) / "manifest.json").is_file():
            out.append(f"{key}: no manifest.json in {folder} ({writer} writes one)")
    if config.camera.info is not None and not Path(config.camera.info).is_file():
        out.append(f"camera.info: {config.camera.info} is not a file")
    return out


def run(argv: Sequence[str] | None = None, locator_type: Any = None, locator_config_type: Any = None) -> int:
    """Parse arguments, load the config and run the service with ``locator_type`` (default: the real locator)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level or "INFO")
    if locator_type is None:
        from edge_runtime.locator import Locator, LocatorConfig

        locator_type, locator_config_type = Locator, LocatorConfig
    try:
        config, locator_config = load_all(args.config, locator_config_type)
    except ConfigError as exc:
        print(f"edge-runtime: invalid config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(args.log_level or config.log_level)
    if args.check:
        missing = missing_files(config)
        if missing:
            print(f"edge-runtime: {args.config}: " + "; ".join(missing), file=sys.stderr)
            return EXIT_CONFIG
        print(f"{args.config}: OK (vehicle {config.vehicle_id}, source {config.source.kind}, "
              f"broker {config.mqtt.host}:{config.mqtt.port} MQTT {config.mqtt.protocol}, "
              f"poses on {config.topic('pose')}"
              + (f", MAVLink {config.mavlink.autopilot} on {config.mavlink.connection}"
                 if config.mavlink is not None and config.mavlink.enabled else "") + ")")
        return EXIT_OK
    from edge_runtime.service.service import run_service

    return run_service(config, locator_type, locator_config)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``edge-runtime``."""
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
