//! A private Mosquitto started from the project's `config/mosquitto.conf`.

use crate::{free_port, signal, unique, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn mosquitto_bin() -> &'static str {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or("mosquitto")
}

/// Mosquitto on a free port with the project's settings, its data in a folder of its own.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Child,
    /// Files made before the broker started (the dynamic security store), removed on drop.
    extra: Option<PathBuf>,
}

impl Broker {
    /// `mosquitto_pub` or `mosquitto_sub` pointed at this broker, QoS 1: the clients
    /// people use, for tests that check what a stock client sees or sends.
    pub fn client(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1"]);
        c
    }

    /// The broker's process id (to weigh its CPU).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start() -> Self {
        Self::start_with(|port| format!("listener {port} 127.0.0.1"))
    }

    /// Starts from config/mosquitto.conf with its `listener` line replaced by
    /// `listener(port)` (e.g. a TLS listener with authentication).
    pub fn start_with(listener: impl Fn(u16) -> String) -> Self {
        Self::start_editing(listener, |_| None)
    }

    /// Like [`Broker::start_with`]; `edit` may replace any other line of the
    /// project's file (return the new line), e.g. `max_inflight_messages 0`.
    pub fn start_editing(
        listener: impl Fn(u16) -> String,
        edit: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let port = free_port().expect("a free port");
        let dir = std::env::temp_dir().join(unique("cityhub_mq"));
        std::fs::create_dir_all(&dir).unwrap();
        // Mosquitto started as root drops to its own user: let it write its persistence file.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = std::fs::read_to_string(workspace_root().join("config/mosquitto.conf"))
            .expect("reading config/mosquitto.conf");
        let listener_text = listener(port);
        // A listener that sets its own authentication replaces the project's default.
        let own_auth = listener_text.contains("allow_anonymous");
        let conf: String = conf
            .lines()
            .filter(|l| !(own_auth && l.starts_with("allow_anonymous")))
            .map(|l| {
                if l.starts_with("persistence_location ") {
                    format!("persistence_location {}/", dir.display())
                } else if l.starts_with("listener ") {
                    listener_text.clone()
                } else {
                    edit(l).unwrap_or_else(|| l.to_owned())
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Self::spawn(&path, &dir);
        let b = Self {
            port,
            dir,
            child,
            extra: None,
        };
        b.wait_listening();
        b
    }

    /// Mosquitto with its dynamic security plugin, no anonymous access, and one client,
    /// `admin` with `password`, holding the plugin's admin role (as `mosquitto_ctrl
    /// dynsec init` makes it): what a production broker managed by the hub looks like.
    pub fn start_dynsec(admin: &str, password: &str) -> Self {
        Self::start_dynsec_with(admin, password, |port| format!("listener {port} 127.0.0.1"))
    }

    /// [`Broker::start_dynsec`] on the listener `listener(port)` gives (TLS, say).
    pub fn start_dynsec_with(
        admin: &str,
        password: &str,
        listener: impl Fn(u16) -> String,
    ) -> Self {
        let files = std::env::temp_dir().join(unique("cityhub_dynsec"));
        std::fs::create_dir_all(&files).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o777)).unwrap();
        let store = files.join("dynamic-security.json");
        let out = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&store)
            .args([admin, password])
            .output()
            .expect("mosquitto_ctrl must be installed (Debian's mosquitto-clients)");
        assert!(
            out.status.success(),
            "mosquitto_ctrl dynsec init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The broker drops to its own user and rewrites the file on every change.
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o666)).unwrap();
        let plugin = [
            "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
            "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
            "/usr/lib/mosquitto_dynamic_security.so",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Mosquitto's dynamic security plugin (Debian's mosquitto package ships it)");
        let store_path = store.display().to_string();
        let mut b = Self::start_with(move |port| {
            format!(
                "{}\nallow_anonymous false\nplugin {plugin}\nplugin_opt_config_file {store_path}",
                listener(port)
            )
        });
        b.extra = Some(files);
        b
    }

    /// Stops the broker the way a service manager does (SIGTERM: it saves its
    /// persistent sessions) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stops the broker as [`Broker::restart`] does, leaving it down (an outage).
    pub fn stop(&mut self) {
        signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }

    /// Starts a stopped broker again on the same port and data.
    pub fn start_again(&mut self) {
        self.child = Self::spawn(&self.dir.join("mosquitto.conf"), &self.dir);
        self.wait_listening();
    }

    fn spawn(conf: &Path, dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("mosquitto.log"))
            .unwrap();
        Command::new(mosquitto_bin())
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto must be installed (apt-get install mosquitto)")
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Connection settings for this broker (plain, anonymous).
    pub fn mqtt(&self) -> cityhub_core::MqttSettings {
        cityhub_core::MqttSettings {
            url: cityhub_core::ConnUrl::new(self.url()),
            ..Default::default()
        }
    }

    /// A folder the broker may read (it drops root privileges), for its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(d) = &self.extra {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
