ALTER MATERIALIZED VIEW obs_hourly SET (timescaledb.materialized_only = false);
ALTER MATERIALIZED VIEW obs_daily SET (timescaledb.materialized_only = false);
