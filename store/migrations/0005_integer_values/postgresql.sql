-- The hourly and daily views read the decoded values.
CREATE OR REPLACE VIEW obs_hourly AS
SELECT date_trunc('hour', time) AS bucket, sensor_id, metric_id,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count,
       (array_agg(value ORDER BY time DESC))[1] AS last
FROM observations GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW obs_daily AS
SELECT date_trunc('day', time) AS bucket, sensor_id, metric_id,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count,
       (array_agg(value ORDER BY time DESC))[1] AS last
FROM observations GROUP BY 1, 2, 3;
