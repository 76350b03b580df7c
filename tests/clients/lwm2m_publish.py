"""paho-mqtt publishing SenML packs as LwM2M devices (Leshan, Zephyr, RIOT) write
them: IPSO object/resource names, Sensor Units as a string record, a whole
instance with min/max resources, a base name without separator, a UTF-8 BOM.

usage: lwm2m_publish.py BROKER_HOST BROKER_PORT
"""
import json
import sys
import time

import paho.mqtt.client as mqtt

host, port = sys.argv[1], int(sys.argv[2])
packs = [
    ("cityhub/v1/air_quality/lwm2m-aq", [{"bn": "/3303/0/", "n": "5700", "v": 22.4}, {"n": "5701", "vs": "Cel"}]),
    ("cityhub/v1/air_quality/lwm2m-aq", [
        {"bn": "/3304/0/", "bt": round(time.time()) - 60, "n": "5700", "v": 48.5, "t": 0},
        {"n": "5601", "v": 40}, {"n": "5602", "v": 60}, {"n": "5701", "vs": "%RH"}, {"n": "5750", "vs": "Outdoor"},
        {"bn": "/3428/0/", "n": "1", "v": 31.5}, {"n": "3", "v": 12.25}, {"n": "15", "v": 0.02},
    ]),
    ("cityhub/v1/waste_bin/lwm2m-bin", [
        {"bn": "/3435/0/", "n": "2", "v": 47}, {"n": "3", "v": 61}, {"n": "1", "v": 115},
        {"bn": "/3330/0/", "n": "5700", "v": 0.85}, {"n": "5701", "vs": "m"},
    ]),
    ("cityhub/v1/air_quality/kpn-1f04", [{"bn": "kpn-1f04", "n": "temperature", "v": 21}, {"n": "humidity", "v": 50}]),
]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lwm2m-devices")
c.connect(host, port)
c.loop_start()
for topic, pack in packs:
    c.publish(topic, json.dumps(pack), qos=1).wait_for_publish(10)
# A device SDK that writes a byte order mark before the JSON.
c.publish("cityhub/v1/air_quality/lwm2m-bom", b"\xef\xbb\xbf" + json.dumps([{"n": "pm10", "v": 20}]).encode(), qos=1).wait_for_publish(10)
c.loop_stop()
c.disconnect()
print(f"published {len(packs) + 1} packs")
