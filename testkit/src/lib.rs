//! Private services to run cityhub against, so no test shares state with another:
//! free ports, a fresh database per test, a private Mosquitto started from the
//! project's `config/mosquitto.conf`, a private PostgreSQL cluster (from
//! `cityhub-local`, which the demo uses too), and (feature `hub`) the hub itself,
//! in-process or as a process, with simulated traffic. Tests and the bench use
//! these; there are no other copies.

#[cfg(feature = "hub")]
pub mod aggregates;
pub mod broker;
pub mod db;
#[cfg(feature = "hub")]
pub mod hub;
#[cfg(feature = "hub")]
pub mod patroni;
pub mod python;
#[cfg(feature = "hub")]
pub mod traffic;

#[cfg(feature = "hub")]
pub use aggregates::{
    bucket_mismatches, compress_all, is_timescale, run_policies, wait_for_aggregates,
};
pub use broker::Broker;
pub use cityhub_local::{free_port, is_root, server_bin, PrivatePostgres};
pub use db::{admin_url, test_preload, timescaledb_mode, TableLock, TestDb};
#[cfg(feature = "hub")]
pub use hub::{cli, cli_ok, hub_bin, metric_at, wait_for, Hub, HubBuilder};
#[cfg(feature = "hub")]
pub use patroni::Patroni;
#[cfg(feature = "hub")]
pub use traffic::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test, process or run uses: `prefix_pid_counter_random`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// The repository's root (for `config/`, `web/` and `target/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
        .to_owned()
}

/// `target/test-logs`: hub logs, screenshots and reports, kept as CI artifacts.
pub fn artifacts_dir() -> PathBuf {
    let d = workspace_root().join("target/test-logs");
    std::fs::create_dir_all(&d).expect("creating target/test-logs");
    d
}

/// Sends `sig` (`TERM`, `KILL`, ...) to a process.
pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Resident memory of a process, in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .map(|s| {
            let f: Vec<&str> = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (ticks(11) + ticks(12)) / 100.0
        })
        .unwrap_or(0.0)
}
