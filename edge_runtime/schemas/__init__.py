"""JSON Schemas (draft 2020-12) of the service's MQTT messages: pose, status and the telemetry input."""
