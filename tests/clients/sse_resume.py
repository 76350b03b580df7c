"""An SSE client (httpx-sse) that drops its connection and resumes with
Last-Event-ID, while paho-mqtt publishes readings: it must get every reading
once, in order; from an id the hub no longer knows it must be told to reload.

usage: sse_resume.py HUB BROKER_HOST BROKER_PORT SENSOR
"""
import json
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import paho.mqtt.client as mqtt
from httpx_sse import connect_sse

hub, host, port, sensor = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
topic = f"cityhub/v1/air_quality/{sensor}"
t0 = datetime.now(timezone.utc) - timedelta(minutes=30)

pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sse-resume-{sensor}")
pub.connect(host, port)
pub.loop_start()


def publish(values):
    for v in values:
        ts = (t0 + timedelta(seconds=v)).isoformat().replace("+00:00", "Z")
        info = pub.publish(topic, json.dumps({"ts": ts, "values": {"pm10": v}}), qos=1)
        info.wait_for_publish(10)
        time.sleep(0.15)  # batches of their own, mostly: more events to compare


def until(events, last_value, deadline_s=30):
    """(id, data) of `readings` events until one carries pm10 = `last_value`."""
    got, end = [], time.monotonic() + deadline_s
    for e in events:
        if e.event == "readings":
            assert e.id, f"a readings event without id: {e}"
            got.append((e.id, e.data))
            if any(r["metric"] == "pm10" and r["value"] == last_value for r in json.loads(e.data)["readings"]):
                return got
        assert e.event == "readings" or not e.data, f"unexpected event {e.event}: {e.data}"
        assert time.monotonic() < end, f"timed out with {got}"
    raise AssertionError(f"the stream ended with {got}")


url = f"{hub}/api/v1/stream?sensor={sensor}"
reference, ready = [], threading.Event()


def listen_throughout():
    """A client that never disconnects: what the resuming one must end up with."""
    with httpx.Client(timeout=httpx.Timeout(60.0)) as h, connect_sse(h, "GET", url) as es:
        events = es.iter_sse()
        next(events)
        ready.set()
        reference.extend(until(events, 15, 60))


a = threading.Thread(target=listen_throughout, daemon=True)
a.start()
assert ready.wait(10), "the reference client did not connect"
with httpx.Client(timeout=httpx.Timeout(30.0)) as http:
    with connect_sse(http, "GET", url) as es:
        events = es.iter_sse()
        first = next(events)
        assert first.retry and first.retry > 0, f"no retry: in the first event: {first}"
        publish(range(1, 6))
        before = until(events, 5)
    last_id = before[-1][0]
    print(f"first connection: {len(before)} events, last id {last_id}, retry {first.retry} ms")

    publish(range(6, 16))  # while this client is away
    with connect_sse(http, "GET", url, headers={"Last-Event-ID": last_id}) as es:
        after = until(es.iter_sse(), 15)
    a.join(60)
    mine = before + after
    assert mine == reference, f"resumed client got {mine}, the one that stayed got {reference}"
    ids = [i for i, _ in mine]
    assert len(ids) == len(set(ids)), ids
    print(f"resumed after {last_id}: {len(after)} more events; {len(mine)} in all, the same as a client that never left")

    with connect_sse(http, "GET", url, headers={"Last-Event-ID": "0-1-0"}) as es:
        kinds = []
        for e in es.iter_sse():
            kinds.append(e.event)
            if e.event == "reload":
                break
            assert len(kinds) < 5, kinds
    print(f"unknown id: told to {kinds[-1]}")
pub.loop_stop()
print("sse ok")
