"""Checks GeoJSON documents from the hub with the `geojson` package (RFC 7946 validity)
and shapely (geometry validity, coordinates in WGS 84 range).

usage: geojson_check.py URL...   prints one JSON summary line; exits 1 on any error.
"""
import json
import sys
import urllib.request

import geojson
from shapely.geometry import shape


def check(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        ctype = r.headers.get("Content-Type", "")
        doc = geojson.loads(r.read().decode("utf-8"))
    errors = []
    if not ctype.startswith("application/geo+json"):
        errors.append(f"content type {ctype!r}")
    if not doc.is_valid:
        errors.append(f"geojson: {doc.errors()}")
    features = doc["features"] if doc.get("type") == "FeatureCollection" else [doc]
    located = 0
    for f in features:
        if f.get("type") != "Feature" or "properties" not in f:
            errors.append(f"not a Feature: {f.get('id')}")
            continue
        if f.get("geometry") is None:
            continue
        g = shape(f["geometry"])
        if not g.is_valid or g.geom_type != "Point":
            errors.append(f"{f.get('id')}: invalid geometry {g.wkt}")
        elif not (-180 <= g.x <= 180 and -90 <= g.y <= 90):
            errors.append(f"{f.get('id')}: outside WGS 84 {g.wkt}")
        located += 1
    return {"url": url, "features": len(features), "with_geometry": located, "errors": errors}


def main():
    results = [check(u) for u in sys.argv[1:]]
    print(json.dumps(results))
    sys.exit(1 if any(r["errors"] for r in results) else 0)


if __name__ == "__main__":
    main()
