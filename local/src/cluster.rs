//! A private PostgreSQL cluster run from the system's server binaries in a folder
//! of its own: the demo's database, and the server the fault tests restart.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL server binaries not found (Debian: `apt-get install postgresql`)")]
    NotInstalled,
    #[error("{tool} {args} failed ({status}):\n{output}")]
    Tool {
        tool: String,
        args: String,
        status: String,
        output: String,
    },
    #[error("path {0:?} is not UTF-8")]
    Path(PathBuf),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The newest installed PostgreSQL server's bin folder (Debian layout).
pub fn server_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    dirs.pop()
}

/// Whether we run as root (then the cluster, and package installs, are ours to do).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn path_str(p: &Path) -> Result<&str, ClusterError> {
    p.to_str().ok_or_else(|| ClusterError::Path(p.to_owned()))
}

/// A cluster in `dir/pg`, listening on 127.0.0.1:`port` (trust auth, user
/// `postgres`); stopped on drop. Run as root, it belongs to the `postgres` user,
/// since initdb refuses root.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    pub port: u16,
    running: bool,
    /// `shared_preload_libraries` of the server (e.g. `timescaledb`).
    preload: Vec<String>,
}

impl PrivatePostgres {
    /// Starts the cluster in `dir` on `port`, creating it first when `dir` holds
    /// none. Returns it and whether it was created.
    pub fn start(dir: &Path, port: u16) -> Result<(Self, bool), ClusterError> {
        Self::start_preloading(dir, port, &[])
    }

    /// Like [`PrivatePostgres::start`], with these `shared_preload_libraries`
    /// (`timescaledb` for a TimescaleDB server).
    pub fn start_preloading(
        dir: &Path,
        port: u16,
        preload: &[&str],
    ) -> Result<(Self, bool), ClusterError> {
        let bin = server_bin().ok_or(ClusterError::NotInstalled)?;
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let data = dir.join("pg");
        let as_postgres = is_root();
        if as_postgres {
            // The cluster belongs to the postgres user; so must its folder (and the way to it).
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            let mut p = dir.as_path();
            while let Some(parent) = p.parent() {
                let _ = Command::new("chmod").arg("o+x").arg(parent).status();
                p = parent;
            }
        }
        let mut pg = Self {
            bin,
            dir,
            data,
            as_postgres,
            port,
            running: false,
            preload: preload.iter().map(|l| l.to_string()).collect(),
        };
        let fresh = !pg.data.join("PG_VERSION").exists();
        if fresh {
            let data = path_str(&pg.data)?.to_owned();
            pg.tool(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
            )?;
        }
        pg.start_server()?;
        Ok((pg, fresh))
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    fn start_server(&mut self) -> Result<(), ClusterError> {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            path_str(&self.dir)?
        );
        if !self.preload.is_empty() {
            opts.push_str(&format!(
                " -c shared_preload_libraries={}",
                self.preload.join(",")
            ));
        }
        let data = path_str(&self.data)?.to_owned();
        let log = path_str(&self.dir.join("postgres.log"))?.to_owned();
        self.tool(
            "pg_ctl",
            &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if !self.running {
            return Ok(());
        }
        let data = path_str(&self.data)?.to_owned();
        self.tool("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])?;
        self.running = false;
        Ok(())
    }

    /// Starts a stopped server again, on the same port.
    pub fn resume(&mut self) -> Result<(), ClusterError> {
        if self.running {
            return Ok(());
        }
        self.start_server()
    }

    /// Runs a server tool, as the `postgres` user when we are root. Its output is
    /// kept in `<dir>/<tool>.log` and returned in the error when it fails.
    fn tool(&self, tool: &str, args: &[&str]) -> Result<(), ClusterError> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output()?;
        let mut text = out.stdout;
        text.extend_from_slice(&out.stderr);
        let _ = std::fs::write(self.dir.join(format!("{tool}.log")), &text);
        if !out.status.success() {
            return Err(ClusterError::Tool {
                tool: exe.display().to_string(),
                args: args.join(" "),
                status: out.status.to_string(),
                output: String::from_utf8_lossy(&text).into_owned(),
            });
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "Could not stop the private PostgreSQL.");
        }
    }
}
