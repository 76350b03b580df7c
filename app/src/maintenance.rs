//! TimescaleDB upkeep from the hub: every hub reads the policy jobs' health for
//! `/readyz` and `/metrics`; the hub holding the leader lock (a session advisory
//! lock, so several hubs on one database elect one) runs the jobs that are due; and
//! every hub refreshes the aggregate buckets its own late commits touched.

use chrono::{DateTime, Utc};
use cityhub_core::settings::StoreSettings;
use cityhub_core::MaintenanceMode;
use cityhub_store::maintenance::{self, JobState, Report, SharedStatus, AGGREGATES, LEADER_LOCK};
use cityhub_store::{Store, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub job: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub view: &'static str,
    pub result: &'static str,
}

/// Maintenance metrics; labels are job and view names (a handful), never ids.
#[derive(Clone)]
pub struct MaintenanceMetrics {
    state: Family<JobLabel, Gauge>,
    scheduler_failing: Family<JobLabel, Gauge>,
    last_success_age: Family<JobLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    runs: Family<RunLabels, Counter>,
    refreshes: Family<RefreshLabels, Counter>,
    leader: Gauge,
}

impl MaintenanceMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            state: Family::default(),
            scheduler_failing: Family::default(),
            last_success_age: Family::default(),
            runs: Family::default(),
            refreshes: Family::default(),
            leader: Gauge::default(),
        };
        let r = r.sub_registry_with_prefix("cityhub");
        r.register(
            "timescaledb_job_state",
            "Policy job state: 0 ok, 1 covered by a hub, 2 failing",
            m.state.clone(),
        );
        r.register(
            "timescaledb_job_scheduler_failing",
            "1 when TimescaleDB's scheduler failed the job's last run or left it waiting",
            m.scheduler_failing.clone(),
        );
        r.register(
            "timescaledb_job_last_success_age_seconds",
            "Seconds since anyone (scheduler or hub) last ran the job successfully",
            m.last_success_age.clone(),
        );
        r.register(
            "maintenance_runs",
            "Policy jobs run by this hub, by outcome",
            m.runs.clone(),
        );
        r.register(
            "aggregate_late_refreshes",
            "Refreshes of aggregate buckets below the watermark after late commits, by outcome",
            m.refreshes.clone(),
        );
        r.register(
            "maintenance_leader",
            "1 while this hub holds the maintenance leader lock",
            m.leader.clone(),
        );
        m
    }

    fn record(&self, report: &Report) {
        self.leader.set(i64::from(report.leader));
        for j in &report.jobs {
            let label = JobLabel {
                job: j.job.name.clone(),
            };
            let state = match j.state {
                JobState::Ok => 0,
                JobState::Covered => 1,
                JobState::Failing => 2,
            };
            self.state.get_or_create(&label).set(state);
            self.scheduler_failing
                .get_or_create(&label)
                .set(i64::from(j.job.scheduler_failing(report.checked_at)));
            if let Some(t) = j.job.last_done() {
                let age = (report.checked_at - t).num_milliseconds().max(0) as f64 / 1000.0;
                self.last_success_age.get_or_create(&label).set(age);
            }
        }
    }
}

/// Reads job health every `maintenance_interval_s` and, as leader, runs jobs due.
pub async fn jobs_task(
    store: Store,
    settings: StoreSettings,
    status: SharedStatus,
    metrics: MaintenanceMetrics,
    cancel: CancellationToken,
) {
    let every = Duration::from_secs(settings.maintenance_interval_s.max(1));
    let mut session: Option<(tokio_postgres::Client, bool)> = None;
    loop {
        let round = tokio::select! {
            r = check_and_run(&store, settings.maintenance, &mut session, &metrics) => r,
            _ = cancel.cancelled() => break,
        };
        match round {
            Ok(report) => {
                metrics.record(&report);
                status.write().expect("status lock").jobs = Some(report);
            }
            Err(e) => {
                // The lock went with the session: campaign again on the next one.
                session = None;
                metrics.leader.set(0);
                tracing::warn!(error = %e, "Maintenance check failed; will retry.");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => break,
        }
    }
}

async fn check_and_run(
    store: &Store,
    mode: MaintenanceMode,
    session: &mut Option<(tokio_postgres::Client, bool)>,
    metrics: &MaintenanceMetrics,
) -> Result<Report, StoreError> {
    if session.as_ref().is_none_or(|(c, _)| c.is_closed()) {
        *session = Some((store.connect().await?, false));
    }
    let (client, leader) = session.as_mut().expect("session just made");
    if !*leader && mode != MaintenanceMode::Timescaledb {
        *leader = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .await?
            .get(0);
        if *leader {
            tracing::info!(mode = ?mode, "Maintenance: this hub is the leader.");
        }
    }
    let mut jobs = maintenance::jobs(&*client).await?;
    if *leader {
        let now = Utc::now();
        let mut ran = false;
        for job in jobs.iter().filter(|j| j.due(mode, now)) {
            ran = true;
            let result = maintenance::run_job(client, job.id).await;
            let label = |result| RunLabels {
                job: job.name.clone(),
                result,
            };
            match result {
                Ok(()) => {
                    metrics.runs.get_or_create(&label("ok")).inc();
                    tracing::info!(job = %job.name, id = job.id, scheduler_status = ?job.last_status, "Maintenance: ran the job.");
                }
                Err(e) if e.is_connection_lost() => return Err(e),
                Err(e) => {
                    metrics.runs.get_or_create(&label("error")).inc();
                    tracing::warn!(job = %job.name, id = job.id, error = %e, "Maintenance: the job failed when the hub ran it.");
                }
            }
        }
        if ran {
            jobs = maintenance::jobs(&*client).await?;
        }
    }
    Ok(Report::new(mode, *leader, jobs, Utc::now()))
}

/// The jobs' health now, as `cityhub maintenance status` prints it.
pub async fn report(store: &Store, mode: MaintenanceMode) -> Result<Report, StoreError> {
    let c = store.connect().await?;
    let jobs = maintenance::jobs(&c).await?;
    Ok(Report::new(mode, false, jobs, Utc::now()))
}

/// Runs every policy job once, now, whoever leads (`cityhub maintenance run`): after
/// an import, or where nothing else runs them. A job's failure is in the report.
pub async fn run_all(store: &Store, mode: MaintenanceMode) -> Result<Report, StoreError> {
    let c = store.connect().await?;
    for job in maintenance::jobs(&c).await?.iter().filter(|j| j.scheduled) {
        match maintenance::run_job(&c, job.id).await {
            Ok(()) => tracing::info!(job = %job.name, "Ran the job."),
            Err(e) if e.is_connection_lost() => return Err(e),
            Err(e) => tracing::warn!(job = %job.name, error = %e, "The job failed."),
        }
    }
    let jobs = maintenance::jobs(&c).await?;
    Ok(Report::new(mode, false, jobs, Utc::now()))
}

/// Plain PostgreSQL: folds the writers' rollup deltas every `every`, so the views'
/// unfolded part stays small. A failure is retried next round; nothing is lost, as
/// deltas stay until folded.
pub async fn rollup_fold_task(store: Store, every: Duration, cancel: CancellationToken) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failing = false;
    let mut rounds = cityhub_store::rollups::FoldRounds::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => break,
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match store.connect().await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "Folding rollup deltas: no connection; will retry.");
                    }
                    failing = true;
                    continue;
                }
            }
        }
        let c = client.as_ref().expect("connected");
        let folded = tokio::select! {
            r = rounds.round(c) => r,
            _ = cancel.cancelled() => return,
        };
        match folded {
            Ok(_) => {
                if failing {
                    tracing::info!("Folding rollup deltas works again.");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "Folding rollup deltas failed; will retry.");
                }
                failing = true;
                client = None;
            }
        }
    }
}

/// Several hubs on one database: the one holding this session lock materializes the
/// indicators' days (arbitrary constant, "cityhub-indicator").
const INDICATOR_LOCK: i64 = 0x6369_7479_6869_6e64;

/// Materializes the indicators' settled days and mends those late readings marked
/// (`cityhub_store::indicators::materialize`), every `every`, or again at once while
/// a backfill has days left. One hub at a time, by a session lock.
pub async fn indicator_days_task(
    store: Store,
    catalog: std::sync::Arc<cityhub_core::Catalog>,
    cfg: cityhub_core::indicators::IndicatorSettings,
    every: Duration,
    cancel: CancellationToken,
) {
    /// Settled days one round adds over every base: bounds a round's length.
    const BUDGET_DAYS: i64 = 400;
    let mut session: Option<(tokio_postgres::Client, bool)> = None;
    let mut failing = false;
    let mut more = false;
    let mut watch = cityhub_store::indicators::MarkWatch::default();
    loop {
        if !more {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = cancel.cancelled() => break,
            }
        }
        more = false;
        let round = async {
            if session.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                let c = store.connect().await?;
                // A month of a large fleet is one statement: more than a request's
                // timeout allows, and nobody waits for it.
                c.batch_execute("SET statement_timeout = '15min'").await?;
                session = Some((c, false));
            }
            let (c, held) = session.as_mut().expect("session just made");
            if !*held {
                *held = c
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&INDICATOR_LOCK])
                    .await?
                    .get(0);
                if !*held {
                    return Ok(None);
                }
            }
            let started = std::time::Instant::now();
            cityhub_store::indicators::materialize(
                c,
                &store,
                &catalog,
                &cfg,
                BUDGET_DAYS,
                &mut watch,
            )
            .await
            .map(|m| Some((m, started.elapsed())))
        };
        let result: Result<_, StoreError> = tokio::select! {
            r = round => r,
            _ = cancel.cancelled() => break,
        };
        match result {
            Ok(Some((m, took))) => {
                if failing {
                    tracing::info!("Materializing indicator days works again.");
                }
                failing = false;
                more = m.more;
                if m.days > 0 {
                    tracing::info!(
                        bases = m.bases,
                        days = m.days,
                        rows = m.rows,
                        marks = m.marks,
                        waiting = m.waiting,
                        more = m.more,
                        ms = took.as_millis() as u64,
                        "Indicator days materialized."
                    );
                }
            }
            Ok(None) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "Materializing indicator days failed; will retry.");
                }
                failing = true;
                session = None;
            }
        }
    }
}

/// TimescaleDB, every `late_refresh_s`: when this hub committed readings below an
/// aggregate's watermark, refreshes the buckets from the earliest of them up to the
/// watermark, so late readings reach hourly and daily answers in seconds rather than
/// at the policy's next run.
pub async fn late_refresh_task(
    store: Store,
    every: Duration,
    status: SharedStatus,
    metrics: MaintenanceMetrics,
    cancel: CancellationToken,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    // Per aggregate, the earliest reading this hub committed that no refresh is known
    // to have seen (see `maintenance::late_plan`).
    let mut owed: [Option<DateTime<Utc>>; AGGREGATES.len()] = [None; AGGREGATES.len()];
    let mut pause = every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = cancel.cancelled() => break,
        }
        let taken = store.take_written();
        for o in &mut owed {
            *o = o.iter().copied().chain(taken).min();
        }
        if owed.iter().all(Option::is_none) {
            pause = every;
            continue;
        }
        let started = std::time::Instant::now();
        let result = tokio::select! {
            r = refresh_late(&store, &mut client, &mut owed, taken.is_some(), &metrics) => r,
            _ = cancel.cancelled() => break,
        };
        pause = late_refresh_pause(every, started.elapsed());
        let error = match result {
            Ok(()) => None,
            Err(e) => {
                // What is owed stays owed for the next round; the policy is the backstop.
                client = None;
                tracing::warn!(error = %e, "Refreshing late aggregate buckets failed; will retry.");
                Some(e.to_string())
            }
        };
        status.write().expect("status lock").late_refresh_error = error;
    }
}

/// The pause before the next late refresh: `every`, or nine times what the last one
/// took when that is longer. A refresh recomputes each touched bucket whole, so under
/// a steady backfill (a replay, a fleet sending old readings) each one takes longer
/// as the bucket fills; back to back every 2 s they took 1.5 s each and most of a
/// core (bench/cpu-split --timescaledb). This keeps them to a tenth of the time, and
/// late readings reach the aggregates a little later.
fn late_refresh_pause(every: Duration, took: Duration) -> Duration {
    every.max(took * 9)
}

async fn refresh_late(
    store: &Store,
    client: &mut Option<tokio_postgres::Client>,
    owed: &mut [Option<DateTime<Utc>>; AGGREGATES.len()],
    fresh: bool,
    metrics: &MaintenanceMetrics,
) -> Result<(), StoreError> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(store.connect().await?);
    }
    let c = client.as_ref().expect("connected");
    for ((view, bucket_s), owed) in AGGREGATES.into_iter().zip(owed.iter_mut()) {
        let Some(earliest) = *owed else {
            continue;
        };
        let watermark = maintenance::watermark(c, view).await?;
        let watermark = match watermark {
            Some(w) if !maintenance::never_materialized(watermark) => w,
            _ => {
                // A new database: its policy's first run found no rows, and until the
                // next one (15 minutes on) every query would aggregate every row
                // written. The rows stay owed: the run may not see the last of them.
                if maintenance::run_refresh_policy_now(c, view).await? {
                    tracing::info!(
                        view,
                        "Rows written to an aggregate never materialized; its refresh policy runs now."
                    );
                }
                continue;
            }
        };
        let plan = maintenance::late_plan(earliest, fresh, watermark, bucket_s);
        if let Some((from, to)) = plan.window {
            let label = |result| RefreshLabels { view, result };
            match maintenance::refresh(c, view, from, to).await {
                Ok(()) => {
                    metrics.refreshes.get_or_create(&label("ok")).inc();
                    tracing::debug!(view, from = %from, to = %to, "Refreshed late aggregate buckets.");
                }
                Err(e) => {
                    metrics.refreshes.get_or_create(&label("error")).inc();
                    return Err(e);
                }
            }
        }
        *owed = plan.owed;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_late_refresh_waits_nine_times_its_length() {
        let every = Duration::from_secs(2);
        assert_eq!(late_refresh_pause(every, Duration::from_millis(30)), every);
        assert_eq!(
            late_refresh_pause(every, Duration::from_millis(1500)),
            Duration::from_millis(13_500)
        );
    }
}
