"""Optional MAVLink bridge: absolute fixes to PX4 (GLOBAL_POSITION_SENSOR) or ArduPilot (GPS_INPUT), priors back.

Modules:

* :mod:`~edge_runtime.mavlink.config`: :class:`MavlinkConfig` (the ``mavlink:`` section of the vehicle YAML).
* :mod:`~edge_runtime.mavlink.encode`: pure LocateResult -> fix fields (units, accuracies, height datums).
* :mod:`~edge_runtime.mavlink.priors`: time alignment of the autopilot's altitude and attitude with the frames.
* :mod:`~edge_runtime.mavlink.link`: UDP/TCP/serial transports and the counting packet parser.
* :mod:`~edge_runtime.mavlink.bridge`: :class:`MavlinkBridge` (start/stop, publish_fix, latest_priors, link_status).

pymavlink (extra ``mavlink``) is imported only when a bridge starts; importing this package never needs it.
See docs/mavlink.md for the autopilot parameters and the wiring.
"""

from edge_runtime.mavlink.bridge import MavlinkBridge
from edge_runtime.mavlink.config import MavlinkConfig, MavlinkConfigError, parse_connection
from edge_runtime.mavlink.encode import Fix, fix_from_result, global_position_sensor_fields, gps_input_fields

__all__ = [
    "Fix",
    "MavlinkBridge",
    "MavlinkConfig",
    "MavlinkConfigError",
    "fix_from_result",
    "global_position_sensor_fields",
    "gps_input_fields",
    "parse_connection",
]
