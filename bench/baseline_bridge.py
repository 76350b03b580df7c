"""The baseline: an MQTT-to-PostgreSQL bridge of the kind people write by hand.

paho-mqtt subscriber, one psycopg INSERT per metric, autocommit per message.
Same topics, payloads and tables as cityhub, so the benchmark compares like
with like. Runs until killed.
"""
import json
import sys
from datetime import datetime

import paho.mqtt.client as mqtt
import psycopg

broker_port, db_url = int(sys.argv[1]), sys.argv[2]
conn = psycopg.connect(db_url, autocommit=True)
metric_ids = {(k, n): i for i, k, n in conn.execute("SELECT id, kind, name FROM metrics")}
sensor_ids = {}


def sensor_id(external_id, kind):
    sid = sensor_ids.get(external_id)
    if sid is None:
        sid = conn.execute(
            "INSERT INTO sensors (external_id, kind) VALUES (%s, %s) "
            "ON CONFLICT (external_id) DO UPDATE SET kind = excluded.kind RETURNING id",
            (external_id, kind),
        ).fetchone()[0]
        sensor_ids[external_id] = sid
    return sid


def on_message(client, userdata, msg):
    _, _, kind, ext = msg.topic.split("/")
    doc = json.loads(msg.payload)
    ts = datetime.fromisoformat(doc["ts"].replace("Z", "+00:00"))
    sid = sensor_id(ext, kind)
    for name, value in doc["values"].items():
        conn.execute(
            "INSERT INTO observations_data (time, sensor_id, metric_id, value) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (ts, sid, metric_ids[(kind, name)], value),
        )


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="baseline-bridge")
client.on_message = on_message
client.on_connect = lambda c, u, f, rc, p: c.subscribe("cityhub/v1/#", qos=1)
client.connect("127.0.0.1", broker_port)
client.loop_forever()
