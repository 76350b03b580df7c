//! A highly available PostgreSQL of the test's own: etcd and three PostgreSQL
//! servers managed by Patroni (the Debian packages `patroni` and `etcd-server`) on
//! loopback ports, in synchronous mode, as a city would run it on three machines.
//! A test kills a node (Patroni and its PostgreSQL, as a machine lost) and starts
//! it again; Patroni decides the failover.

use crate::{free_port, is_root, server_bin, unique, wait_for};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One Patroni node: its ports, folder and process.
struct Node {
    name: String,
    pg_port: u16,
    api_port: u16,
    dir: PathBuf,
    patroni: Option<Child>,
}

/// etcd and three Patroni nodes; everything stops, and the folder goes, on drop.
pub struct Patroni {
    dir: PathBuf,
    etcd: Child,
    nodes: Vec<Node>,
    /// The user PostgreSQL runs as (`postgres` when the tests run as root).
    user: Option<(u32, u32)>,
    http: reqwest::Client,
}

/// The uid and gid of `postgres`, for a server started by root.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .expect("a postgres user (Debian's postgresql package makes it)")
    };
    (id("-u"), id("-g"))
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Patroni {
    /// Starts etcd and `n` nodes and waits until one leads and the others stream from
    /// it, one of them synchronously.
    pub async fn start(n: usize) -> Self {
        assert!(
            found("patroni") && found("etcd"),
            "Patroni and etcd are missing: apt-get install patroni etcd-server (./scripts/test does)"
        );
        let bin = server_bin().expect("PostgreSQL server binaries");
        let dir = std::env::temp_dir().join(unique("cityhub_patroni"));
        std::fs::create_dir_all(&dir).unwrap();
        let user = is_root().then(postgres_ids);

        let (client, peer) = (free_port().unwrap(), free_port().unwrap());
        let etcd_log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let etcd = Command::new("etcd")
            .args(["--name", "e0", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("e0=http://127.0.0.1:{peer}"),
                "--initial-cluster-token",
                &unique("cityhub"),
            ])
            .stdout(etcd_log.try_clone().unwrap())
            .stderr(etcd_log)
            .spawn()
            .expect("starting etcd");

        let scope = unique("cityhub");
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("node{i}");
            let node_dir = dir.join(&name);
            std::fs::create_dir_all(&node_dir).unwrap();
            let node = Node {
                name,
                pg_port: free_port().unwrap(),
                api_port: free_port().unwrap(),
                dir: node_dir,
                patroni: None,
            };
            std::fs::write(
                node.dir.join("patroni.yml"),
                node_config(&node, &scope, client, &bin),
            )
            .unwrap();
            nodes.push(node);
        }
        if let Some((uid, gid)) = user {
            let _ = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .args(nodes.iter().map(|n| &n.dir))
                .status();
            let _ = Command::new("chmod").arg("o+x").arg(&dir).status();
        }
        let mut cluster = Self {
            dir,
            etcd,
            nodes,
            user,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        };
        // The first node bootstraps the cluster; the others clone it once it leads.
        cluster.start_node(0);
        wait_for(120, "the first Patroni node to lead", || async {
            cluster.leader().await == Some(0)
        })
        .await;
        for i in 1..n {
            cluster.start_node(i);
        }
        cluster.wait_healthy(180).await;
        cluster
    }

    /// Starts (again) node `i`'s Patroni, which starts its PostgreSQL.
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.patroni.is_none(), "{} runs already", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("patroni.log"))
            .unwrap();
        let mut cmd = Command::new("patroni");
        cmd.arg(node.dir.join("patroni.yml"))
            .env("HOME", &node.dir)
            .current_dir(&node.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        node.patroni = Some(cmd.spawn().expect("starting patroni"));
    }

    /// Loses node `i` as a machine is lost: SIGKILL to Patroni and to its PostgreSQL
    /// (the postmaster and every backend: Patroni starts it in a session of its own).
    pub fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut p) = node.patroni.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if let Some(pid) = postmaster_pid(&node.dir.join("data")) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// The URL the hubs write with: every node, the one that takes writes wins
    /// (libpq's `target_session_attrs=read-write`), so a hub follows a failover.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@{}/{db}?target_session_attrs=read-write&sslmode=disable",
            self.hosts()
        )
    }

    /// Every node, for `database.read_url` (the hub picks the standbys).
    pub fn read_url(&self, db: &str) -> String {
        format!("postgres://postgres@{}/{db}?sslmode=disable", self.hosts())
    }

    fn hosts(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.pg_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A URL to database `db` on node `i` alone.
    pub fn node_url(&self, i: usize, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.nodes[i].pg_port
        )
    }

    /// Patroni's view of the cluster (`GET /cluster`) from the first node that answers.
    pub async fn members(&self) -> Option<serde_json::Value> {
        for n in &self.nodes {
            let url = format!("http://127.0.0.1:{}/cluster", n.api_port);
            if let Ok(r) = self.http.get(&url).send().await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    return Some(v["members"].clone());
                }
            }
        }
        None
    }

    /// The index of the node that leads now, if one does and runs.
    pub async fn leader(&self) -> Option<usize> {
        let members = self.members().await?;
        let name = members.as_array()?.iter().find_map(|m| {
            (m["role"] == "leader" && m["state"] == "running").then(|| m["name"].as_str())?
        })?;
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Waits until a node leads, every other one streams from it, and one of them
    /// is its synchronous standby.
    pub async fn wait_healthy(&self, secs: u64) {
        let n = self.nodes.len();
        wait_for(secs, "the Patroni cluster to be whole again", || async {
            let Some(members) = self.members().await else {
                return false;
            };
            let Some(members) = members.as_array() else {
                return false;
            };
            let running = |m: &&serde_json::Value| {
                matches!(m["state"].as_str(), Some("running" | "streaming"))
            };
            let leaders = members
                .iter()
                .filter(|m| m["role"] == "leader")
                .filter(running)
                .count();
            let sync = members
                .iter()
                .filter(|m| m["role"] == "sync_standby")
                .filter(running)
                .count();
            let replicas = members
                .iter()
                .filter(|m| m["role"] == "replica" || m["role"] == "sync_standby")
                .filter(running)
                .count();
            leaders == 1 && sync == 1 && replicas == n - 1
        })
        .await;
    }

    /// Where a node's logs are, for a failing test's message.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The postmaster's pid from its data folder, while it runs.
fn postmaster_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Patroni's configuration for `node` (preloading TimescaleDB when the tests ask
/// for it, [`crate::test_preload`]). Short timings, so a failover takes seconds:
/// the leader key lives 10 s (`ttl`), Patroni loops every second. `fsync` is off:
/// the tests kill processes, never the machine, so the page cache survives them.
fn node_config(node: &Node, scope: &str, etcd: u16, bin: &Path) -> String {
    let dir = node.dir.display();
    format!(
        "scope: {scope}
namespace: /cityhub/
name: {name}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 16777216
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_connections: 200
        max_wal_senders: 10
        max_replication_slots: 10
        fsync: 'off'
  initdb:
    - encoding: UTF8
    - auth: trust
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {dir}/data
  bin_dir: {bin}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: postgres
    replication:
      username: replicator
      password: replicator
  parameters:
    unix_socket_directories: '{dir}'
    shared_buffers: 32MB
{preload}  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication replicator 127.0.0.1/32 trust
",
        name = node.name,
        api = node.api_port,
        pg = node.pg_port,
        bin = bin.display(),
        preload = match crate::test_preload() {
            [] => String::new(),
            libs => format!(
                "    shared_preload_libraries: '{}'\n    timescaledb.telemetry_level: 'off'\n    max_worker_processes: 32\n",
                libs.join(",")
            ),
        },
    )
}

impl Drop for Patroni {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        if std::thread::panicking() {
            // The test failed: keep what Patroni and PostgreSQL said.
            let keep = crate::artifacts_dir().join(self.dir.file_name().unwrap_or_default());
            let _ = Command::new("cp")
                .arg("-r")
                .arg(&self.dir)
                .arg(&keep)
                .status();
            let _ = Command::new("rm")
                .arg("-rf")
                .args([keep.join("etcd")])
                .status();
            for n in &self.nodes {
                let _ = std::fs::remove_dir_all(keep.join(&n.name).join("data"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
