-- A refresh policy materializes in batches of ten buckets, each batch its own
-- transaction, and since TimescaleDB 2.20 the newest batch first. An aggregate's
-- watermark is the newest bucket materialized, and below it an answer reads only
-- what is materialized; so during a first refresh (a new database, a replayed year)
-- every bucket older than the first batch answered empty until its own batch
-- committed: a day of indicators, hourly means or a feed came out with holes
-- (tests/aggregates.rs, the first materialization). Oldest first, the watermark
-- only passes buckets already materialized, and everything above it is computed
-- from the raw rows, so every answer is whole at every moment of a refresh.
DO $$
BEGIN
    IF string_to_array(substring((SELECT extversion FROM pg_extension WHERE extname = 'timescaledb')
                                 FROM '^[0-9]+\.[0-9]+'), '.')::int[] >= ARRAY[2, 20] THEN
        PERFORM alter_job(j.job_id,
                          config => j.config || jsonb_build_object('refresh_newest_first', false))
        FROM timescaledb_information.jobs j
        JOIN _timescaledb_catalog.continuous_agg a
          ON a.mat_hypertable_id = (j.config->>'mat_hypertable_id')::int
        WHERE j.proc_name = 'policy_refresh_continuous_aggregate'
          AND a.user_view_schema = current_schema()
          AND a.user_view_name IN ('obs_hourly', 'obs_daily');
    END IF;
END
$$;
