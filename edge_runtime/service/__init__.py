"""The onboard service: frames in, poses out over MQTT, under systemd (torch-free).

Modules:

* :mod:`~edge_runtime.service.config`: the YAML service config as frozen dataclasses, validated on load.
* :mod:`~edge_runtime.service.sdnotify`: the systemd notify protocol (READY / STATUS / WATCHDOG / STOPPING).
* :mod:`~edge_runtime.service.frame_queue`: the bounded latest-frame queue.
* :mod:`~edge_runtime.service.sources`: image folder, video file, live camera and MQTT JPEG frame sources.
* :mod:`~edge_runtime.service.telemetry`: priors from EXIF/XMP, an MQTT telemetry topic or the config.
* :mod:`~edge_runtime.service.payloads`: pose and status JSON (``edge_runtime/schemas/*.schema.json``).
* :mod:`~edge_runtime.service.mqtt`: the paho-mqtt 2.x link (birth / Last Will, QoS, TLS, backoff, outbox).
* :mod:`~edge_runtime.service.service`: the processing loop. :mod:`~edge_runtime.service.cli`: ``edge-runtime``.
* :mod:`~edge_runtime.service.broker`: a throw-away loopback mosquitto for tests, benchmarks and the demo.
"""
