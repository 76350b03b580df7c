-- Continuous aggregates cannot read a view: they decode the two columns themselves.
-- Recreated empty; the refresh policies (whole history) materialize them again, and
-- until then they answer from the raw rows (real-time).
DROP MATERIALIZED VIEW obs_daily;
DROP MATERIALIZED VIEW obs_hourly;

CREATE MATERIALIZED VIEW obs_hourly WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, sensor_id, metric_id,
       avg(coalesce(value, value_milli::float8 / 1000)) AS avg,
       min(coalesce(value, value_milli::float8 / 1000)) AS min,
       max(coalesce(value, value_milli::float8 / 1000)) AS max,
       count(*) AS count,
       last(coalesce(value, value_milli::float8 / 1000), time) AS last
FROM observations_data GROUP BY 1, 2, 3 WITH NO DATA;
SELECT add_continuous_aggregate_policy('obs_hourly',
    start_offset => NULL, end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '15 minutes');

CREATE MATERIALIZED VIEW obs_daily WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', time) AS bucket, sensor_id, metric_id,
       avg(coalesce(value, value_milli::float8 / 1000)) AS avg,
       min(coalesce(value, value_milli::float8 / 1000)) AS min,
       max(coalesce(value, value_milli::float8 / 1000)) AS max,
       count(*) AS count,
       last(coalesce(value, value_milli::float8 / 1000), time) AS last
FROM observations_data GROUP BY 1, 2, 3 WITH NO DATA;
SELECT add_continuous_aggregate_policy('obs_daily',
    start_offset => NULL, end_offset => INTERVAL '1 day', schedule_interval => INTERVAL '1 hour');
SELECT add_retention_policy('obs_hourly', {retention});
SELECT add_retention_policy('obs_daily', {retention});
