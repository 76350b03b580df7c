CREATE TABLE observations (
    time      timestamptz NOT NULL,
    sensor_id integer NOT NULL,
    metric_id smallint NOT NULL,
    value     double precision NOT NULL,
    UNIQUE (sensor_id, metric_id, time)
);
SELECT create_hypertable('observations', 'time', chunk_time_interval => INTERVAL '1 day');
ALTER TABLE observations SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'sensor_id, metric_id',
    timescaledb.compress_orderby = 'time DESC'
);
SELECT add_compression_policy('observations', {compress_after});
SELECT add_retention_policy('observations', {retention});

CREATE MATERIALIZED VIEW obs_hourly WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, sensor_id, metric_id,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count,
       last(value, time) AS last
FROM observations GROUP BY 1, 2, 3 WITH NO DATA;
SELECT add_continuous_aggregate_policy('obs_hourly',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '15 minutes');

CREATE MATERIALIZED VIEW obs_daily WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 day', time) AS bucket, sensor_id, metric_id,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count,
       last(value, time) AS last
FROM observations GROUP BY 1, 2, 3 WITH NO DATA;
SELECT add_continuous_aggregate_policy('obs_daily',
    start_offset => INTERVAL '7 days', end_offset => INTERVAL '1 day', schedule_interval => INTERVAL '1 hour');
SELECT add_retention_policy('obs_hourly', {retention});
SELECT add_retention_policy('obs_daily', {retention});
