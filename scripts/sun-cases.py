#!/usr/bin/env python3
"""Writes tests/fixtures/sun_cases.json: the sun's altitude at places and times where
lamps are judged, from NREL's Solar Position Algorithm (pvlib 0.11.2), a reference
independent of both the hub's NOAA equations (core/src/sun.rs) and the map's suncalc
(web/src/state.js). Both are tested against the table (core/src/sun.rs, web/tests/).

    python3 -m venv /tmp/sun && /tmp/sun/bin/pip install pvlib==0.11.2
    /tmp/sun/bin/python scripts/sun-cases.py > tests/fixtures/sun_cases.json
"""
import json
import pandas as pd
import pvlib

PLACES = [  # name, lat, lon
    ("Cremona", 45.1333, 10.0244),
    ("Palermo", 38.1157, 13.3615),
    ("Oslo", 59.9139, 10.7522),
    ("Tromso", 69.6492, 18.9553),
    ("Quito", -0.1807, -78.4678),
    ("Sydney", -33.8688, 151.2093),
]
# Every 97 minutes through a year (steps that wander through the hours of the day).
times = pd.date_range("2026-01-01T00:17:00Z", "2026-12-31T23:00:00Z", freq="97min")
cases = []
for name, lat, lon in PLACES:
    pos = pvlib.solarposition.get_solarposition(times, lat, lon, method="nrel_numpy")
    for t, elev in zip(times[::13], pos["elevation"].to_numpy()[::13]):
        cases.append([lat, lon, t.strftime("%Y-%m-%dT%H:%M:%SZ"), round(float(elev), 3)])
print(json.dumps({
    "source": "NREL SPA via pvlib 0.11.2 (geometric elevation, no refraction); scripts/sun-cases.py",
    "columns": ["lat", "lon", "time", "altitude_deg"],
    "cases": cases,
}, separators=(",", ":")))
