//! TimescaleDB's jobs and aggregates as the hub sees them: each job's health (its
//! scheduler's last run, and the hub's), running a job from a normal session, and
//! refreshing the hourly/daily buckets that rows written below the watermark touched.
//!
//! The scheduler's runs can fail where a normal session's succeed (TimescaleDB 2.28 on
//! PostgreSQL 15.20: `cannot drop portal "" while it is being set up`), so the hub
//! watches and, when elected, fills in (see `cityhub-app`).

use crate::error::StoreError;
use chrono::{DateTime, Datelike, Duration, DurationRound, Utc};
use cityhub_core::MaintenanceMode;
use serde::Serialize;
use tokio_postgres::GenericClient;

/// Arbitrary constant: the hub holding this session lock runs the jobs.
pub const LEADER_LOCK: i64 = 0x0063_6974_796d_6e74;

/// The continuous aggregates and their bucket widths.
pub const AGGREGATES: [(&str, i64); 2] = [("obs_hourly", 3600), ("obs_daily", 86_400)];

/// One policy job on the hub's tables, with its last runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Job {
    pub id: i32,
    /// `compression:observations_data`, `retention:obs_daily`, `refresh:obs_hourly`: a
    /// stable name, used as the metric label.
    pub name: String,
    pub schedule_interval_s: f64,
    /// False when an operator paused it (`alter_job(..., scheduled => false)`).
    pub scheduled: bool,
    /// The scheduler's last run: `Success`, `Failed`, or none yet.
    pub last_status: Option<String>,
    #[serde(serialize_with = "cityhub_core::time::serialize_opt")]
    pub last_run_started: Option<DateTime<Utc>>,
    #[serde(serialize_with = "cityhub_core::time::serialize_opt")]
    pub last_success: Option<DateTime<Utc>>,
    #[serde(serialize_with = "cityhub_core::time::serialize_opt")]
    pub next_start: Option<DateTime<Utc>>,
    pub total_failures: i64,
    /// The scheduler's error of its last run, when that run failed.
    pub last_error: Option<String>,
    /// The last time a hub ran it (`maintenance_runs`), and how that went.
    #[serde(serialize_with = "cityhub_core::time::serialize_opt")]
    pub hub_ran_at: Option<DateTime<Utc>>,
    pub hub_error: Option<String>,
}

/// How a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// The scheduler runs it.
    Ok,
    /// The scheduler fails or lags, and a hub's last run of it succeeded in time.
    Covered,
    /// Nobody ran it successfully in time.
    Failing,
}

impl Job {
    fn every(&self) -> Duration {
        Duration::milliseconds((self.schedule_interval_s * 1000.0) as i64)
    }

    /// The scheduler's last run failed, or it left the job waiting past its start
    /// by more than a period (no free background worker, scheduler stopped).
    pub fn scheduler_failing(&self, now: DateTime<Utc>) -> bool {
        let lagging = self
            .next_start
            .is_some_and(|t| t < now - self.every().max(Duration::minutes(5)));
        self.scheduled && (self.last_status.as_deref() == Some("Failed") || lagging)
    }

    /// The newest successful run by anyone.
    pub fn last_done(&self) -> Option<DateTime<Utc>> {
        let hub = self.hub_ran_at.filter(|_| self.hub_error.is_none());
        self.last_success.max(hub)
    }

    pub fn state(&self, now: DateTime<Utc>) -> JobState {
        // A hub's failed run newer than the scheduler's last success is a failure,
        // whatever the scheduler has (not yet) done.
        let hub_failed = self.hub_error.is_some()
            && self
                .hub_ran_at
                .is_some_and(|t| self.last_success.is_none_or(|s| t > s));
        if hub_failed {
            return JobState::Failing;
        }
        if !self.scheduler_failing(now) {
            return JobState::Ok;
        }
        let fresh = self
            .hub_ran_at
            .is_some_and(|t| now - t <= self.every() * 2 + Duration::minutes(5));
        if fresh {
            JobState::Covered
        } else {
            JobState::Failing
        }
    }

    /// Should the elected hub run it now?
    pub fn due(&self, mode: MaintenanceMode, now: DateTime<Utc>) -> bool {
        if !self.scheduled || self.hub_ran_at.is_some_and(|t| now - t < self.every()) {
            return false;
        }
        match mode {
            MaintenanceMode::Timescaledb => false,
            MaintenanceMode::Hub => true,
            MaintenanceMode::Auto => self.scheduler_failing(now),
        }
    }
}

/// What `/readyz` says of maintenance: the jobs as last read, and this hub's part.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: MaintenanceMode,
    /// This hub holds the leader lock and runs the jobs due.
    pub leader: bool,
    /// Worst state of any job.
    pub state: JobState,
    #[serde(serialize_with = "cityhub_core::time::serialize")]
    pub checked_at: DateTime<Utc>,
    pub jobs: Vec<JobReport>,
}

/// Maintenance as this hub last saw it; shared with the HTTP API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// `None` until the first check, and on plain PostgreSQL.
    pub jobs: Option<Report>,
    /// Why this hub's last refresh of late buckets failed (it is retried); `None` when
    /// it succeeded.
    pub late_refresh_error: Option<String>,
}

pub type SharedStatus = std::sync::Arc<std::sync::RwLock<Status>>;

#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    #[serde(flatten)]
    pub job: Job,
    pub state: JobState,
}

impl Report {
    pub fn new(mode: MaintenanceMode, leader: bool, jobs: Vec<Job>, now: DateTime<Utc>) -> Self {
        let jobs: Vec<JobReport> = jobs
            .into_iter()
            .map(|job| JobReport {
                state: job.state(now),
                job,
            })
            .collect();
        Self {
            mode,
            leader,
            state: jobs.iter().map(|j| j.state).max().unwrap_or(JobState::Ok),
            checked_at: now,
            jobs,
        }
    }
}

fn short_proc(proc: &str) -> &str {
    match proc {
        "policy_compression" => "compression",
        "policy_retention" => "retention",
        "policy_refresh_continuous_aggregate" => "refresh",
        other => other,
    }
}

/// The policy jobs on `observations` and its aggregates, with their last runs.
pub async fn jobs<C: GenericClient>(c: &C) -> Result<Vec<Job>, StoreError> {
    let rows = c
        .query(
            "SELECT j.job_id, j.proc_name::text, j.hypertable_name::text,
                    extract(epoch FROM j.schedule_interval)::float8, j.scheduled,
                    s.last_run_status::text, s.last_run_started_at, s.last_successful_finish,
                    s.next_start, coalesce(s.total_failures, 0)::int8,
                    (SELECT e.err_message FROM timescaledb_information.job_errors e
                      WHERE e.job_id = j.job_id ORDER BY e.start_time DESC LIMIT 1),
                    r.ran_at, r.error
             FROM timescaledb_information.jobs j
             LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
             LEFT JOIN maintenance_runs r ON r.job_id = j.job_id
             WHERE j.hypertable_schema = current_schema()
               AND j.hypertable_name IN ('observations_data', 'obs_hourly', 'obs_daily')
             ORDER BY j.job_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let status: Option<String> = r.get(5);
            let failed = status.as_deref() == Some("Failed");
            Job {
                id: r.get(0),
                name: format!("{}:{}", short_proc(r.get(1)), r.get::<_, &str>(2)),
                schedule_interval_s: r.get(3),
                scheduled: r.get(4),
                last_status: status,
                last_run_started: time(r, 6),
                last_success: time(r, 7),
                next_start: time(r, 8),
                total_failures: r.get(9),
                last_error: r.get::<_, Option<String>>(10).filter(|_| failed),
                hub_ran_at: time(r, 11),
                hub_error: r.get(12),
            }
        })
        .collect())
}

/// A timestamp column; TimescaleDB writes ±infinity for "never", which is `None` here.
fn time(r: &tokio_postgres::Row, i: usize) -> Option<DateTime<Utc>> {
    r.try_get::<_, Option<DateTime<Utc>>>(i).ok().flatten()
}

/// Runs job `id` in this session, as its scheduler would, and records the outcome in
/// `maintenance_runs` for every hub to see. Must not be inside a transaction.
pub async fn run_job(c: &tokio_postgres::Client, id: i32) -> Result<(), StoreError> {
    let result = c.batch_execute(&format!("CALL run_job({id})")).await;
    let error = result.as_ref().err().map(|e| match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    });
    c.execute(
        "INSERT INTO maintenance_runs (job_id, ran_at, error) VALUES ($1, now(), $2)
         ON CONFLICT (job_id) DO UPDATE SET ran_at = excluded.ran_at, error = excluded.error",
        &[&id, &error],
    )
    .await?;
    result.map_err(StoreError::from)
}

/// Below this instant `view` answers only from what was materialized; `None` when it
/// never was (then every bucket is computed at query time).
pub async fn watermark<C: GenericClient>(
    c: &C,
    view: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let row = c
        .query_opt(
            "SELECT _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark(mat_hypertable_id))
             FROM _timescaledb_catalog.continuous_agg
             WHERE user_view_schema = current_schema() AND user_view_name = $1",
            &[&view],
        )
        .await?;
    // A never-refreshed aggregate reports the minimum time, -infinity to chrono.
    Ok(row.and_then(|r| r.try_get::<_, DateTime<Utc>>(0).ok()))
}

/// Whether `view` was never materialized: TimescaleDB then reports its minimum time
/// as the watermark, and every query aggregates the whole history at query time.
pub fn never_materialized(watermark: Option<DateTime<Utc>>) -> bool {
    watermark.is_none_or(|w| w.year() < 1)
}

/// Asks TimescaleDB's scheduler to run `view`'s refresh policy now rather than at its
/// next interval; true when it was not already due. The run is the policy's own, in
/// the background worker, so the hub waits for nothing.
pub async fn run_refresh_policy_now<C: GenericClient>(
    c: &C,
    view: &str,
) -> Result<bool, StoreError> {
    let moved = c
        .query(
            "SELECT alter_job(j.job_id, next_start => now())
             FROM timescaledb_information.jobs j
             JOIN _timescaledb_catalog.continuous_agg a
               ON a.mat_hypertable_id = (j.config->>'mat_hypertable_id')::int
             WHERE j.proc_name = 'policy_refresh_continuous_aggregate'
               AND a.user_view_schema = current_schema() AND a.user_view_name = $1
               AND j.next_start > now()",
            &[&view],
        )
        .await?;
    Ok(!moved.is_empty())
}

/// The buckets of width `bucket_s` that rows from `earliest` on touch below
/// `watermark`, as a refresh window; `None` when they are all above it.
pub fn late_window(
    earliest: DateTime<Utc>,
    watermark: Option<DateTime<Utc>>,
    bucket_s: i64,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let watermark = watermark?;
    let start = earliest.duration_trunc(Duration::seconds(bucket_s)).ok()?;
    (start < watermark).then_some((start, watermark))
}

/// What one late-refresh round does for one aggregate: the window to refresh, and the
/// earliest reading time this hub still owes it afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatePlan {
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub owed: Option<DateTime<Utc>>,
}

/// The round for an aggregate materialized up to `watermark`, owed rows from `owed` on
/// (`fresh`: some of them were committed since the last round).
///
/// Rows above the watermark need nothing now, as answers compute them from the raw
/// rows; but a refresh that began before they were committed (the policy, in
/// batches) can move the watermark past them without having seen them, and then
/// they wait for its next run (15 minutes, an hour). So they stay owed until a
/// round sees the watermark past them and refreshes up to it; rows at or above the
/// watermark in a round that refreshes below it leave the watermark itself owed.
pub fn late_plan(
    owed: DateTime<Utc>,
    fresh: bool,
    watermark: DateTime<Utc>,
    bucket_s: i64,
) -> LatePlan {
    match late_window(owed, Some(watermark), bucket_s) {
        Some(window) => LatePlan {
            window: Some(window),
            owed: fresh.then_some(watermark),
        },
        None => LatePlan {
            window: None,
            owed: Some(owed),
        },
    }
}

/// Materializes `view` over `[from, to)`: TimescaleDB recomputes the buckets there
/// that changed. Must not be inside a transaction.
pub async fn refresh(
    c: &tokio_postgres::Client,
    view: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Literals, not parameters: CALL with parameters would need the extended protocol
    // and its transaction block, which refresh_continuous_aggregate refuses.
    c.batch_execute(&format!(
        "CALL refresh_continuous_aggregate('{view}', '{}'::timestamptz, '{}'::timestamptz)",
        from.to_rfc3339(),
        to.to_rfc3339()
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job(status: Option<&str>, next_start_min_ago: i64) -> Job {
        let now = now();
        Job {
            id: 1000,
            name: "refresh:obs_hourly".into(),
            schedule_interval_s: 900.0,
            scheduled: true,
            last_status: status.map(String::from),
            last_run_started: None,
            last_success: None,
            next_start: Some(now - Duration::minutes(next_start_min_ago)),
            total_failures: 0,
            last_error: None,
            hub_ran_at: None,
            hub_error: None,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    #[test]
    fn a_job_the_scheduler_runs_is_left_to_it_unless_the_hub_is_asked_to() {
        let j = job(Some("Success"), -10);
        assert_eq!(j.state(now()), JobState::Ok);
        assert!(!j.due(MaintenanceMode::Auto, now()));
        assert!(j.due(MaintenanceMode::Hub, now()));
        assert!(!j.due(MaintenanceMode::Timescaledb, now()));
    }

    #[test]
    fn a_failed_or_lagging_job_is_run_by_the_hub_once_a_period() {
        for j in [job(Some("Failed"), -10), job(Some("Success"), 20)] {
            assert!(j.scheduler_failing(now()));
            assert_eq!(j.state(now()), JobState::Failing);
            assert!(j.due(MaintenanceMode::Auto, now()));
            assert!(!j.due(MaintenanceMode::Timescaledb, now()));
            let ran = Job {
                hub_ran_at: Some(now() - Duration::minutes(3)),
                ..j.clone()
            };
            assert_eq!(ran.state(now()), JobState::Covered);
            assert!(!ran.due(MaintenanceMode::Auto, now()), "ran 3 min ago");
            let failed = Job {
                hub_error: Some("boom".into()),
                ..ran.clone()
            };
            assert_eq!(failed.state(now()), JobState::Failing);
            let long_ago = Job {
                hub_ran_at: Some(now() - Duration::hours(2)),
                ..ran
            };
            assert_eq!(long_ago.state(now()), JobState::Failing);
            assert!(long_ago.due(MaintenanceMode::Auto, now()));
        }
    }

    #[test]
    fn a_failed_hub_run_is_a_failure_until_someone_succeeds() {
        let j = Job {
            hub_ran_at: Some(now() - Duration::minutes(1)),
            hub_error: Some("config must have compress_after".into()),
            ..job(None, -10)
        };
        assert_eq!(j.state(now()), JobState::Failing);
        let later = Job {
            last_success: Some(now()),
            last_status: Some("Success".into()),
            ..j
        };
        assert_eq!(later.state(now()), JobState::Ok);
    }

    #[test]
    fn a_paused_job_is_nobody_s_to_run() {
        let j = Job {
            scheduled: false,
            ..job(Some("Failed"), 60)
        };
        assert_eq!(j.state(now()), JobState::Ok);
        assert!(!j.due(MaintenanceMode::Hub, now()));
    }

    #[test]
    fn late_windows_start_at_the_bucket_and_end_at_the_watermark() {
        let wm = Some(now());
        let t = now() - Duration::minutes(90) - Duration::seconds(7);
        assert_eq!(
            late_window(t, wm, 3600),
            Some((now() - Duration::hours(2), now()))
        );
        assert_eq!(
            late_window(t, wm, 86_400),
            Some((Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap(), now()))
        );
        assert_eq!(late_window(now() + Duration::seconds(1), wm, 3600), None);
        assert_eq!(late_window(t, None, 3600), None);
    }

    #[test]
    fn rows_above_the_watermark_stay_owed_until_a_round_sees_it_past_them() {
        let wm = now();
        let above = now() + Duration::minutes(20);
        let kept = late_plan(above, true, wm, 3600);
        assert_eq!(kept.window, None);
        assert_eq!(kept.owed, Some(above));
        // A refresh that started before those rows were committed moved the watermark.
        let moved = now() + Duration::hours(2);
        let later = late_plan(above, false, moved, 3600);
        assert_eq!(later.window, Some((now(), moved)));
        assert_eq!(later.owed, None);
        // New rows in the round that refreshes below the watermark: the watermark is
        // still owed, for the ones at or above it.
        let below = now() - Duration::minutes(30);
        let fresh = late_plan(below, true, wm, 3600);
        assert_eq!(fresh.window, Some((now() - Duration::hours(1), wm)));
        assert_eq!(fresh.owed, Some(wm));
    }
}
