-- The views obs_hourly and obs_daily (0015) ask, for each folded row they read,
-- whether deltas of its key are pending. With rollup_delta a heap without an index,
-- a plan that expects few folded rows (a generic plan, as a pooled prepared statement
-- gets after five runs) read every pending delta once per row: one bin's 30 days of
-- hourly means took 27-31 s under ingest (720 buckets times 300,000 deltas), and the
-- API answered 503. With this index each question is one probe (2 ms). It costs each
-- delta one index entry when it is written.
CREATE INDEX rollup_delta_key_idx ON rollup_delta (sensor_id, metric_id, bucket);
