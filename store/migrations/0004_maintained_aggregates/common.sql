-- A hub's last run of each TimescaleDB job (the scheduler keeps its own in job_stats);
-- every hub reads it for /readyz, and the elected one for its schedule.
CREATE TABLE maintenance_runs (
    job_id integer PRIMARY KEY,
    ran_at timestamptz NOT NULL,
    error  text
);
