-- Named views for dashboards (Grafana's PostgreSQL data source) and SQL users: the
-- readings with the sensor's external id, its kind, the metric's name and unit, so a
-- panel needs no joins and a metric name is never ambiguous across kinds.
-- `cityhub db grant-reader ROLE` gives a read-only role these and nothing else.
CREATE VIEW readings AS
SELECT o.time, s.external_id AS sensor, s.kind, m.name AS metric, m.unit, o.value
FROM observations o
JOIN sensors s ON s.id = o.sensor_id
JOIN metrics m ON m.id = o.metric_id;

CREATE VIEW readings_hourly AS
SELECT h.bucket AS time, s.external_id AS sensor, s.kind, m.name AS metric, m.unit,
       h.avg, h.min, h.max, h.count, h.last
FROM obs_hourly h
JOIN sensors s ON s.id = h.sensor_id
JOIN metrics m ON m.id = h.metric_id;

CREATE VIEW readings_daily AS
SELECT d.bucket AS time, s.external_id AS sensor, s.kind, m.name AS metric, m.unit,
       d.avg, d.min, d.max, d.count, d.last
FROM obs_daily d
JOIN sensors s ON s.id = d.sensor_id
JOIN metrics m ON m.id = d.metric_id;

-- Each sensor's latest value per metric, with its position (Grafana's Geomap panel).
CREATE VIEW readings_latest AS
SELECT l.time, s.external_id AS sensor, s.kind, s.name, s.lon, s.lat, m.name AS metric,
       m.unit, l.value
FROM latest l
JOIN sensors s ON s.id = l.sensor_id
JOIN metrics m ON m.id = l.metric_id;
