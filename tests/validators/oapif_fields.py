"""The fields GDAL's OGC API - Features driver gives a collection, as pyogrio (with
the GDAL in its wheels) reads them: prints one JSON object, GDAL's version and
`{field: dtype}`. Usage: oapif_fields.py <landing page URL> <collection>."""
import json
import sys

import pyogrio

url, layer = sys.argv[1], sys.argv[2]
info = pyogrio.read_info(f"OAPIF:{url}", layer=layer)
print(json.dumps({
    "gdal": pyogrio.__gdal_version_string__,
    "fields": {f: str(t) for f, t in zip(info["fields"], info["dtypes"])},
}))
