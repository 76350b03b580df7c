"""NGSI-LD as its users read it: ngsildclient lists, counts, queries and reads the
temporal API; pyld expands every JSON-LD answer against the vendored @contexts (no
network); every entity validates against its Smart Data Model's official JSON Schema.
With --subscribe TOKEN: ngsildclient subscribes to bins' fill levels for a receiver
of this script's, prints "subscribed", and waits for the notification (whose data
must validate too).

Usage: ngsi_ld_check.py HUB_URL SMART_DATA_MODELS_DIR [--subscribe OPERATOR_TOKEN]
"""
import json
import pathlib
import sys
import urllib.parse

import jsonschema
import requests
from jsonschema import Draft202012Validator
from ngsildclient import Client
from pyld import jsonld
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

hub, models = sys.argv[1].rstrip("/"), pathlib.Path(sys.argv[2])
api = f"{hub}/ngsi-ld/v1"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.7.jsonld"
MODEL_DIRS = {
    "WasteContainer": ("WasteManagement", "WasteContainer"),
    "Streetlight": ("Streetlighting", "Streetlight"),
    "AirQualityObserved": ("Environment", "AirQualityObserved"),
    "TrafficFlowObserved": ("Transportation", "TrafficFlowObserved"),
    "Device": ("Device", "Device"),
}


def load(p):
    return json.loads((models / p).read_text())


# The @contexts the answers name, served from the vendored copies.
documents = {CORE: {"@context": load("ngsi-ld-core-context.jsonld")["1.7"]}}
for ty, (repo, d) in MODEL_DIRS.items():
    url = f"https://raw.githubusercontent.com/smart-data-models/dataModel.{repo}/master/context.jsonld"
    documents[url] = load(f"{d}/context.jsonld")


def loader(url, options=None):
    if url not in documents:
        raise jsonld.JsonLdError(f"no vendored document for {url}", "loading document failed")
    return {"contentType": "application/ld+json", "contextUrl": None, "documentUrl": url, "document": documents[url]}


# The schemas and what they $ref, resolved to the local files.
resources = [
    ("https://smart-data-models.github.io/data-models/common-schema.json", load("common-schema.json")),
    (
        "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/Environment-schema.json",
        load("AirQualityObserved/Environment-schema.json"),
    ),
    ("https://smart-data-models.github.io/dataModel.Device/device-schema.json", load("Device/device-schema.json")),
]
schemas = {}
for ty, (_, d) in MODEL_DIRS.items():
    s = load(f"{d}/schema.json")
    schemas[ty] = s
    resources.append((s["$id"], s))
registry = Registry().with_resources(
    (url, Resource.from_contents(c, default_specification=DRAFT7)) for url, c in resources
)


def validate(ty, entity, formats=True):
    checker = Draft202012Validator.FORMAT_CHECKER if formats else None
    Draft202012Validator(schemas[ty], registry=registry, format_checker=checker).validate(entity)


if len(sys.argv) > 4 and sys.argv[3] == "--subscribe":
    import http.server
    import queue
    import threading

    token = sys.argv[4]
    got = queue.Queue()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.put((self.headers, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    class Bearer(requests.auth.AuthBase):
        def __call__(self, r):
            r.headers["Authorization"] = f"Bearer {token}"
            return r

    u = urllib.parse.urlparse(hub)
    client = Client(hostname=u.hostname, port=u.port, verbose=False, custom_auth=Bearer())
    sid = client.subscriptions.create({
        "type": "Subscription",
        "entities": [{"type": "WasteContainer"}],
        "watchedAttributes": ["fillingLevel"],
        "notification": {
            "format": "keyValues",
            "endpoint": {"uri": f"http://127.0.0.1:{server.server_port}/notify", "accept": "application/json"},
        },
    })
    listed = [s["id"] for s in client.subscriptions.list()]
    assert sid in listed, (sid, listed)
    print("subscribed", sid, flush=True)
    headers, body = got.get(timeout=90)
    n = json.loads(body)
    assert n["type"] == "Notification" and n["subscriptionId"] == sid, n
    assert headers.get("X-Cityhub-Signature-256", "").startswith("sha256="), headers
    for e in n["data"]:
        validate("WasteContainer", e)
    print("notified:", json.dumps(n["data"]), flush=True)
    client.subscriptions.delete(sid)
    sys.exit(0)

# The models' own examples, for the record (some do not pass their own schema: the
# AirQualityObserved one has an integer tsp of 73.3 and a dateObserved without offset).
for ty, (_, d) in MODEL_DIRS.items():
    try:
        validate(ty, load(f"{d}/example.json"))
        print(f"official {ty} example: valid")
    except jsonschema.ValidationError as e:
        print(f"official {ty} example: invalid ({e.message})")
# The validator is real: a fill level in percent fails.
try:
    validate("WasteContainer", {"id": "urn:ngsi-ld:WasteContainer:x", "type": "WasteContainer",
                                "location": {"type": "Point", "coordinates": [10, 45]}, "fillingLevel": 60})
    sys.exit("a fillingLevel of 60 validated")
except jsonschema.ValidationError as e:
    print("negative control refused:", e.message)

# ngsildclient: connects (it probes /ngsi-ld/v1/entities), queries, counts, reads.
u = urllib.parse.urlparse(hub)
client = Client(hostname=u.hostname, port=u.port, verbose=False)
waste_ctx = "https://raw.githubusercontent.com/smart-data-models/dataModel.WasteManagement/master/context.jsonld"
bins = client.query(type="WasteContainer", ctx=waste_ctx)
print("ngsildclient query type=WasteContainer:", sorted(e.id for e in bins))
assert sorted(e.id for e in bins) == ["urn:ngsi-ld:WasteContainer:bin-a", "urn:ngsi-ld:WasteContainer:bin-b"]
full = client.query(type="WasteContainer", q="fillingLevel>0.8", ctx=waste_ctx)
print("ngsildclient q=fillingLevel>0.8:", [e.id for e in full])
assert [e.id for e in full] == ["urn:ngsi-ld:WasteContainer:bin-b"]
# Pages of two: count first, then limit/offset.
devices = client.query(type="Device", limit=2)
print("ngsildclient query type=Device, pages of 2:", [e.id for e in devices])
assert len(devices) == 5 and len({e.id for e in devices}) == 5, devices
n = client.count(type="Device")
print("ngsildclient count type=Device:", n)
assert n == 5, n
a = client.get("urn:ngsi-ld:WasteContainer:bin-a", ctx=waste_ctx, asdict=True)
print("ngsildclient get bin-a fillingLevel:", a["fillingLevel"])
assert a["fillingLevel"]["value"] == 0.6
troe = client.temporal.get("urn:ngsi-ld:WasteContainer:bin-a", attrs=["fillingLevel"], ctx=waste_ctx)
values = [v[0] for v in troe["fillingLevel"]["values"]]
print("ngsildclient temporal bin-a fillingLevel:", values)
assert values == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], troe
lamps = client.temporal.query(type="Streetlight", attrs=["powerConsumption"], ctx=None)
lamps = lamps.result if hasattr(lamps, "result") else lamps
print("ngsildclient temporal query type=Streetlight:", lamps)
assert lamps[0]["powerConsumption"]["values"][0][0] == 120.0, lamps

# Every entity, in each representation: expanded by pyld (no term dropped, the type
# the model's), and valid against its model's schema.
types = requests.get(f"{api}/types").json()["typeList"]
validated = 0
for ty in types:
    ld = requests.get(f"{api}/entities", params={"type": ty, "limit": 1000},
                      headers={"Accept": "application/ld+json"}).json()
    kv = requests.get(f"{api}/entities", params={"type": ty, "limit": 1000, "options": "keyValues"}).json()
    assert len(ld) == len(kv) and ld, (ty, ld)
    for e, k in zip(ld, kv):
        expanded = jsonld.expand(e, {"documentLoader": loader})[0]
        assert len(expanded) == len(e) - 1, f"terms dropped in expansion of {e['id']}: {sorted(e)} -> {sorted(expanded)}"
        assert expanded["@type"][0].startswith("https://smartdatamodels.org/"), expanded["@type"]
        for key in expanded:
            assert "default-context" not in key, key
        validate(ty, k)
        # The normalized form, simplified by hand, is valid too.
        simple = {n: (v if n in ("id", "type") else v.get("object", v.get("value")))
                  for n, v in e.items() if n != "@context"}
        simple = {n: (v["@value"] if isinstance(v, dict) and "@value" in v else v) for n, v in simple.items()}
        validate(ty, simple)
        validated += 1
    print(f"{ty}: {len(ld)} entities expanded and valid")

# A plain JSON answer names its @context in the Link header; expanding with it agrees.
r = requests.get(f"{api}/entities", params={"type": "AirQualityObserved"}, headers={"Accept": "application/json"})
link = requests.utils.parse_header_links(r.headers["Link"])[0]
assert link["rel"] == "http://www.w3.org/ns/json-ld#context", link
exp = jsonld.expand(r.json()[0], {"documentLoader": loader, "expandContext": link["url"]})[0]
assert "https://smartdatamodels.org/dataModel.Environment/pm10" in exp, sorted(exp)
print("Link header context expands pm10 to", "https://smartdatamodels.org/dataModel.Environment/pm10")
print(f"validated {validated} entities")
