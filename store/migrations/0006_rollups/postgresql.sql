-- Plain PostgreSQL: hourly and daily rollup tables in place of views that grouped the
-- whole of observations, so a 24 h or 30 day question reads only its own buckets.
-- The batch writer adds each batch's new rows to them in the batch's own transaction
-- (count and sum add up, min/max widen, last follows the newest time), so a rollup is
-- never behind, a late reading corrects its bucket, and a redelivered row (which
-- inserts nothing) changes nothing. avg is sum / count.
CREATE TABLE obs_hourly_data (
    bucket    timestamptz NOT NULL,
    sensor_id integer     NOT NULL,
    metric_id smallint    NOT NULL,
    count     bigint      NOT NULL,
    sum       float8      NOT NULL,
    min       float8      NOT NULL,
    max       float8      NOT NULL,
    last      float8      NOT NULL,
    last_time timestamptz NOT NULL,
    PRIMARY KEY (sensor_id, metric_id, bucket)
) WITH (fillfactor = 70);
CREATE INDEX obs_hourly_data_bucket_idx ON obs_hourly_data (bucket);

CREATE TABLE obs_daily_data (LIKE obs_hourly_data INCLUDING ALL) WITH (fillfactor = 70);

INSERT INTO obs_hourly_data
SELECT date_trunc('hour', time, 'UTC'), sensor_id, metric_id, count(*), sum(value),
       min(value), max(value), (array_agg(value ORDER BY time DESC))[1], max(time)
FROM observations GROUP BY 1, 2, 3;

INSERT INTO obs_daily_data
SELECT date_trunc('day', time, 'UTC'), sensor_id, metric_id, count(*), sum(value),
       min(value), max(value), (array_agg(value ORDER BY time DESC))[1], max(time)
FROM observations GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW obs_hourly AS
SELECT bucket, sensor_id, metric_id, sum / count AS avg, min, max, count, last
FROM obs_hourly_data;

CREATE OR REPLACE VIEW obs_daily AS
SELECT bucket, sensor_id, metric_id, sum / count AS avg, min, max, count, last
FROM obs_daily_data;
