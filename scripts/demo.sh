#!/usr/bin/env bash
# Fresh machine -> the onboard service on bundled real data: set up .venv, export the reference checkpoint, build the
# map cache of the bundled Brighton Beach orthophotos, then replay the six bundled DJI frames through the onboard
# service (edge-runtime) over MQTT. A local broker starts on a free loopback port (mosquitto when installed, otherwise
# the embedded pure-Python amqtt broker, MQTT 3.1.1), the service publishes, and a subscriber prints each pose (or
# "no fix" status with its reason) with its error against the SfM ground truth. Writes mqtt_messages.json,
# report.json and footprints.png to out/brighton. Extra arguments go to scripts/demo_brighton.py (e.g. --broker amqtt,
# --out DIR, --reuse). Exit status 0 when the run went through (frames without a fix included), 1 on a broker or
# service failure.
#
# The earlier picture demo (cross-season SJER queries, TopicGeo vs SIFT + MAGSAC, no service) is still there:
#   . .venv/bin/activate && python -m topicgeo demo --out out/demo
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python scripts/demo_brighton.py --service "$@"
