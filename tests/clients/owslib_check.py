"""OWSLib, as a QGIS plugin or a notebook uses it, against the hub's OGC API.

usage: owslib_check.py BASE COLLECTION BBOX(minx,miny,maxx,maxy)
Prints one line per check; exits non-zero on the first failure.
"""
import sys
from urllib.parse import parse_qsl, urlparse

from owslib.ogcapi.features import Features

base, collection, bbox = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3].split(",")]
w = Features(base + "/ogc")
assert w.links, "the landing page has no links"
api = w.api()  # follows the service-desc link and loads the OpenAPI document
assert str(api["openapi"]).startswith("3.0"), api["openapi"]
conf = w.conformance()["conformsTo"]
assert any(c.endswith("/conf/oas30") for c in conf), conf
print(f"landing: {len(w.links)} links; openapi {api['openapi']}; {len(conf)} conformance classes")

ids = [c["id"] for c in w.collections()["collections"]]
assert collection in ids, ids
c = w.collection(collection)
assert c["id"] == collection
print(f"collections: {ids}")

first = w.collection_items(collection, bbox=bbox, limit=7)
assert first["type"] == "FeatureCollection"
assert 0 < len(first["features"]) <= 7, len(first["features"])
matched = first.get("numberMatched")
for f in first["features"]:
    x, y = f["geometry"]["coordinates"]
    assert bbox[0] <= x <= bbox[2] and bbox[1] <= y <= bbox[3], (x, y)
print(f"bbox page: {len(first['features'])} of {matched}")

# Every page through `next`, with the parameters the server put in the link.
seen, page, pages = [], w.collection_items(collection, limit=1000), 0
while True:
    pages += 1
    seen += [f["id"] for f in page["features"]]
    nxt = [l for l in page.get("links", []) if l["rel"] == "next"]
    if not nxt:
        break
    params = dict(parse_qsl(urlparse(nxt[0]["href"]).query))
    page = w.collection_items(collection, **params)
total = w.collection_items(collection, limit=1)["numberMatched"]
assert len(seen) == len(set(seen)) == total, (len(seen), len(set(seen)), total)
print(f"paging: {total} features in {pages} pages, none twice")

dated = w.collection_items(collection, datetime_="2000-01-01T00:00:00Z/..", limit=5)
assert dated["type"] == "FeatureCollection"
print(f"datetime: {len(dated['features'])} features")
print("owslib ok")
