-- The views obs_hourly and obs_daily (0015) ask, for each folded row they read,
-- whether deltas of its key are pending. With rollup_delta a heap without an index,
-- a plan that expects few pending deltas (its statistics lag a table that churns) or
-- few folded rows (a generic plan) read every pending delta once per folded row: one
-- bin's 30 days of hourly means took 27-31 s under ingest (720 buckets times 50,000
-- to 300,000 deltas) and the API answered 503. With this index each question is one
-- probe (2 ms for the 30 days; 25 ms p50 under the bench's ingest, where an index on
-- sensor_id alone gave 130-140 ms). Writing a delta costs about 2-3 us more
-- (bench/cpu-split: the deltas' step 1.1-1.2 us a row before, 3.1-4.1 after).
CREATE INDEX rollup_delta_key_idx ON rollup_delta (sensor_id, metric_id, bucket);
