-- The continuous aggregates answer the hours past their watermark from the raw rows
-- (real-time aggregation): `time >= watermark`. Migration 0004 dropped the time index,
-- so that branch read the whole of every chunk at or past the watermark, on every
-- query: a city-wide day of hourly means took 160 ms (p50) beside 900,000 rows in the
-- open chunk (bench/run, api rows). A BRIN index finds the pages past the watermark
-- from a summary per 32 pages and costs the writer nearly nothing: pages appended
-- since the last summary are not indexed yet, only read, and autovacuum summarizes
-- them as they fill. Compressed chunks keep their own sparse indexes.
CREATE INDEX observations_time_brin ON observations_data USING brin (time)
    WITH (pages_per_range = 32, autosummarize = on);
