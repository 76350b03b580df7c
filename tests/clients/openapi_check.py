"""openapi-spec-validator on the hub's API document, and the version it is in
agreeing with what the OGC landing page and conformance declaration say.

usage: openapi_check.py BASE
"""
import json
import sys
import urllib.request

from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV30SpecValidator

base = sys.argv[1]


def get(path):
    with urllib.request.urlopen(base + path) as r:
        return r.headers.get("Content-Type"), json.load(r)


ctype, doc = get("/openapi.json")
assert doc["openapi"].startswith("3.0."), doc["openapi"]
validate(doc, cls=OpenAPIV30SpecValidator)
_, landing = get("/ogc")
desc = [l for l in landing["links"] if l["rel"] == "service-desc"]
assert desc and desc[0]["type"].endswith("version=3.0"), desc
assert "version=3.0" in ctype, ctype
_, conf = get("/ogc/conformance")
assert any(c.endswith("/conf/oas30") for c in conf["conformsTo"]), conf
items = doc["paths"]["/ogc/collections/{collectionId}/items"]["get"]["parameters"]
limit = [p for p in items if p["name"] == "limit"][0]["schema"]
assert limit.get("default") and limit.get("maximum"), limit
print(f"openapi {doc['openapi']} valid; items limit default {limit['default']}, maximum {limit['maximum']}")
