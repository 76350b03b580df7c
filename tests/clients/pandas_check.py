"""pandas, as an analyst loads the hub's downloads: every CSV with its time columns
parsed by read_csv(parse_dates=...), and the GeoJSON's times by to_datetime.

usage: pandas_check.py CSV_URL... -- GEOJSON_URL...
"""
import sys

import pandas as pd

args = sys.argv[1:]
sep = args.index("--")
csvs, geojsons = args[:sep], args[sep + 1 :]


def time_columns(columns):
    return [c for c in columns if c in ("time", "from", "to", "bucket_start") or c.endswith(("_time", "_seen"))]


for url in csvs:
    head = pd.read_csv(url, nrows=0)
    cols = time_columns(head.columns)
    assert cols, f"{url}: no time column in {list(head.columns)}"
    df = pd.read_csv(url, parse_dates=cols)
    filled = [c for c in cols if df[c].notna().any()]
    assert filled, f"{url}: every time column is empty"
    for c in filled:  # an empty column has nothing to parse
        assert pd.api.types.is_datetime64_any_dtype(df[c]), f"{url}: {c} is {df[c].dtype}, e.g. {df[c].dropna().head(3).tolist()}"
        assert str(df[c].dt.tz) == "UTC", f"{url}: {c} has time zone {df[c].dt.tz}"
    print(f"{url}: {len(df)} rows, {filled} parsed as {[str(df[c].dtype) for c in filled]}")

for url in geojsons:
    import json
    import urllib.request

    with urllib.request.urlopen(url) as r:
        doc = json.load(r)
    props = pd.json_normalize([f["properties"] for f in doc["features"]])
    cols = time_columns(props.columns)
    assert cols, f"{url}: no time property"
    for c in cols:
        parsed = pd.to_datetime(props[c], utc=True)  # raises on mixed formats
        assert parsed.notna().sum() == props[c].notna().sum(), c
    print(f"{url}: {len(props)} features, {len(cols)} time properties parse")
print("pandas ok")
