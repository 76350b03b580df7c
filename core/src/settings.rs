//! Layered settings: built-in defaults, then a TOML file, then `CITYHUB_*`
//! environment variables. Unknown keys are errors, so a typo never silently
//! falls back to a default.

use crate::kinds::{Catalog, CatalogError, KindDef};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

/// The built-in kind catalogue (`config/kinds.toml`; README, Sensor kinds).
pub const DEFAULT_KINDS: &str = include_str!("../../config/kinds.toml");

/// A default that is not zero (a constant; `None` would be a bug caught by any test).
pub(crate) fn nz<N: TryInto<T>, T>(n: N) -> T {
    n.try_into().ok().expect("a default is not zero")
}

/// Top-level sections; `CITYHUB_<SECTION>_<KEY>` maps to `<section>.<key>`.
/// The EU data-theme vocabulary (publications.europa.eu/resource/authority/data-theme).
pub const EU_THEMES: &[&str] = &[
    "AGRI", "ECON", "EDUC", "ENER", "ENVI", "GOVE", "HEAL", "INTR", "JUST", "REGI", "SOCI", "TECH",
    "TRAN",
];

const SECTIONS: &[&str] = &[
    "database",
    "mqtt",
    "http",
    "ingest",
    "store",
    "log",
    "catalog",
    "alerts",
    "notify",
    "indicators",
    "sta",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("reading secret file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sensor kinds: {0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Invalid(String),
}

/// A value that must never reach a log line or `config print`.
#[derive(Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// A connection URL whose password part is hidden when printed.
#[derive(Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ConnUrl(String);

impl ConnUrl {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(_) => self.0.clone(),
            // Not a URL (e.g. a libpq key=value string): hide a password=... pair.
            Err(_) => self
                .0
                .split_whitespace()
                .map(|kv| {
                    if kv.starts_with("password=") {
                        "password=***"
                    } else {
                        kv
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}
impl fmt::Debug for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}
impl Serialize for ConnUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// The PostgreSQL (or TimescaleDB) database the hub stores everything in.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `postgres://user@host:port/db?sslmode=require` (libpq URL or key=value string).
    /// `sslmode`: `disable`, `prefer`, `require` (encrypt), `verify-ca` or `verify-full`
    /// (verify the chain, and the host name too). Several hosts
    /// (`postgres://a,b/db?target_session_attrs=read-write`) follow a failover.
    pub url: ConnUrl,
    /// Standbys the public API reads from (listings' queries, readings, feeds, OGC API,
    /// indicators, CSV downloads), so it keeps answering while the primary is down or
    /// busy: a libpq URL, several hosts allowed
    /// (`postgres://standby-a,standby-b/cityhub`). Without `target_session_attrs` the hub
    /// connects only to a standby (`read-only`), and reads from the primary while none
    /// answers. Writes, alert state and the operator's views stay on `url`. Unset: every
    /// read on `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_url: Option<ConnUrl>,
    /// Overrides the URL's password (for `read_url` too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password (Docker/Kubernetes secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) trusted for `sslmode=require`, besides the system roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Connections for the API's queries, ingestion and upkeep (readiness keeps one of its
    /// own besides).
    pub pool_size: usize,
    /// Connections for long downloads (CSV readings) apart from `pool_size`, so slow
    /// clients can never take those that listings, feeds and readiness need. When all are
    /// taken a download is answered 503 at once; one client (an address, an IPv6 /64) holds
    /// at most half of them.
    pub stream_pool_size: usize,
    /// Seconds to wait for a connection to the database before trying again.
    pub connect_timeout_s: u64,
    /// Seconds a query of the API, the alert engine or the registry may run before
    /// PostgreSQL cancels it (the request is answered 503), so that no request can hold a
    /// connection of the pool for long. 0: no limit. The writer has its own
    /// (`ingest.statement_timeout_ms`); upkeep, migrations and CSV downloads have none.
    pub statement_timeout_s: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: ConnUrl::new("postgres://postgres@127.0.0.1:5432/cityhub"),
            read_url: None,
            password: None,
            password_file: None,
            ca_file: None,
            pool_size: 8,
            stream_pool_size: 4,
            connect_timeout_s: 5,
            statement_timeout_s: 30,
        }
    }
}

/// The OGC SensorThings API (`/sta/v1.1`) and its MQTT extension.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StaSettings {
    /// Most entities one answer holds, expanded ones included, so memory stays bounded
    /// whatever `$top` and `$expand` ask; past it the answer is 400.
    pub max_entities: NonZeroU32,
    /// Where each committed reading is published as an STA Observation on the broker:
    /// `Datastreams` (`v1.1/Datastreams(ID)/Observations`), `FeaturesOfInterest`
    /// (`v1.1/FeaturesOfInterest(ID)/Observations`), `Observations` (`v1.1/Observations`).
    /// Each topic is one more message per reading; `v1.1/+/Observations` already reads
    /// every Datastream's. Empty: nothing is published nor kept for publishing.
    pub mqtt_topics: Vec<StaTopic>,
    /// Readings not yet published (the broker down) are kept this many hours, then
    /// dropped from the queue (counted in `cityhub_sta_mqtt_dropped_total`); they stay
    /// readable over HTTP.
    pub mqtt_retention_hours: NonZeroU32,
}

impl Default for StaSettings {
    fn default() -> Self {
        Self {
            max_entities: nz(20_000),
            mqtt_topics: vec![StaTopic::Datastreams],
            mqtt_retention_hours: nz(24),
        }
    }
}

/// An STA MQTT topic family a new Observation is published to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StaTopic {
    Datastreams,
    FeaturesOfInterest,
    Observations,
}

/// The broker the sensors publish to, and how the hub subscribes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// `mqtt://host:1883` or `mqtts://host:8883`.
    pub url: ConnUrl,
    /// Stable, so the broker keeps this hub's session (and queued messages) across restarts.
    pub client_id: String,
    /// The broker runs Mosquitto's dynamic security plugin and `cityhub devices` keeps a
    /// client per device on it; `username` must hold the plugin's admin role. The hub
    /// then grants itself the topics it publishes (alerts) at start.
    pub dynamic_security: bool,
    /// Empty: plain subscriptions. Set: `$share/<group>/<topic>` so several hubs split the stream.
    pub share_group: String,
    /// Topic filters of readings (`cityhub/v1/<kind>/<sensor_id>`); adapters add their own.
    pub topics: Vec<String>,
    /// User name at the broker (or in the URL: `mqtt://user:pass@host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password at the broker (better: `password_file` or `CITYHUB_MQTT_PASSWORD`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// File holding the broker password, read at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) for `mqtts://`; the system roots are used when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `client_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// MQTT 5 Receive Maximum: how many unacknowledged messages the broker may have in
    /// flight to us, and so the bound on the hub's memory. Keep the broker's in-flight
    /// limit equal to it (`config/mosquitto.conf`).
    pub receive_maximum: NonZeroU16,
    /// How long the broker keeps our session and queues messages while we are away.
    pub session_expiry_s: u32,
    /// Seconds between keep-alive pings; the broker drops the hub after 1.5 times this in silence.
    pub keep_alive_s: u64,
    /// Largest packet we accept; the broker drops larger ones for us (MQTT 5), so keep it above
    /// `ingest.max_payload_bytes` to see oversize payloads as dead letters.
    pub max_packet_bytes: u32,
    /// First pause before reconnecting to the broker, doubled on each failure...
    pub reconnect_min_ms: u64,
    /// ...up to this many milliseconds.
    pub reconnect_max_ms: u64,
}

impl MqttSettings {
    /// Pauses between attempts to reconnect to the broker.
    pub fn reconnect_backoff(&self) -> crate::Backoff {
        crate::Backoff::new(self.reconnect_min_ms, self.reconnect_max_ms)
    }
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            url: ConnUrl::new("mqtt://127.0.0.1:1883"),
            client_id: "cityhub-ingest".into(),
            dynamic_security: false,
            share_group: String::new(),
            topics: vec!["cityhub/v1/#".into()],
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            receive_maximum: nz(4096),
            session_expiry_s: 7 * 24 * 3600,
            keep_alive_s: 30,
            max_packet_bytes: 1024 * 1024,
            reconnect_min_ms: 200,
            reconnect_max_ms: 10_000,
        }
    }
}

/// The HTTP server: open-data API, operator map, admin and ingest endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address and port the HTTP server listens on.
    pub addr: String,
    /// The address clients reach the hub at (behind a proxy), used in links, the
    /// catalogue and OGC API documents; unset: taken from each request's Host header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<crate::values::HttpUrl>,
    /// Bearer token of the admin endpoints; with none set they answer 403.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// File holding the admin token, read at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Bearer token of operator calls (acknowledging alerts), separate from the
    /// admin token: a control-room tablet must not be able to change the registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_token: Option<Secret>,
    /// File holding the operator token, read at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_token_file: Option<PathBuf>,
    /// Requests per second one client address may make (0: no limit)...
    pub rate_limit_per_s: u32,
    /// ...with bursts up to this many.
    pub rate_limit_burst: u32,
    /// A download whose client takes no data for this long is ended, and its
    /// database connection freed.
    pub stream_send_timeout_s: u64,
    /// A live-stream client that reconnects with `Last-Event-ID` within this long
    /// gets the events it missed; from further back it is told to reload.
    pub stream_resume_s: u64,
    /// The sensors listing and feeds are answered from memory; this hub's commits show
    /// in them at once, other processes' changes (another hub, `sensors import`) after
    /// at most this long, when they are reloaded from the database.
    pub snapshot_reload_s: u64,
    /// A commit reaches the listing and feeds in the background within about this
    /// long, and requests meanwhile get the previous document at once; 0: each
    /// request waits for the last commit.
    pub snapshot_max_lag_ms: u64,
    /// Reverse proxies (CIDRs or addresses, e.g. `["10.0.0.0/8"]`) whose `X-Forwarded-For`
    /// names the client for rate limiting and logs: the rightmost address that is not
    /// itself a trusted proxy. Anyone else's header is ignored, so behind a proxy set this,
    /// or every client shares the proxy's bucket.
    pub trusted_proxies: Vec<crate::values::Network>,
    /// Largest page of readings or items one request returns.
    pub max_page: NonZeroU32,
    /// Largest request body accepted (admin and ingest calls).
    pub max_body_bytes: usize,
    /// A request's head (line and headers) must arrive within this time...
    pub header_timeout_s: NonZeroU64,
    /// ...and its body within this one (a slow sender is cut off).
    pub body_timeout_s: NonZeroU64,
    /// How long an HTTP upload (`POST /ingest/...`) waits for its commit; past it the
    /// answer is 503 and the upload is never stored, so the client sends it again.
    pub upload_timeout_s: NonZeroU64,
    /// Basemap tiles of the operator map (`{z}/{x}/{y}` template).
    /// (Empty: no basemap; markers, legend and panel work on a plain background.)
    pub tile_url: String,
    /// Attribution shown under the basemap, as its licence requires.
    pub tile_attribution: String,
    /// A built operator map (`npm --prefix web run build`) to serve at `/` instead
    /// of the one compiled into the binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_dir: Option<PathBuf>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            public_url: None,
            admin_token: None,
            admin_token_file: None,
            operator_token: None,
            operator_token_file: None,
            rate_limit_per_s: 50,
            rate_limit_burst: 200,
            trusted_proxies: Vec::new(),
            stream_send_timeout_s: 30,
            stream_resume_s: 300,
            snapshot_reload_s: 30,
            snapshot_max_lag_ms: 1000,
            max_page: nz(10_000),
            max_body_bytes: 1024 * 1024,
            header_timeout_s: nz(10),
            body_timeout_s: nz(10),
            upload_timeout_s: nz(30),
            tile_url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png".into(),
            tile_attribution: "© OpenStreetMap contributors".into(),
            web_dir: None,
        }
    }
}

/// Who publishes the open data, for the DCAT-AP_IT catalogue (defaults: Cremona).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogSettings {
    /// Title of the catalogue (Italian).
    pub title: String,
    /// Title of the catalogue (English).
    pub title_en: String,
    /// Description of the catalogue (Italian).
    pub description: String,
    /// Description of the catalogue (English).
    pub description_en: String,
    /// The publishing administration and its code in the Italian IPA register.
    pub publisher_name: String,
    /// The publisher's code in the IPA register (indicepa.gov.it).
    pub publisher_ipa: String,
    /// Rights holder of the datasets; the publisher when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rights_holder_name: Option<String>,
    /// The rights holder's IPA code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rights_holder_ipa: Option<String>,
    /// The publisher's web site.
    pub homepage: String,
    /// Contact point of the datasets (`dcat:contactPoint`).
    pub contact_name: String,
    /// E-mail address of the contact point.
    pub contact_email: String,
    /// Licence document of every distribution.
    pub licence_url: String,
    /// Name of the licence.
    pub licence_name: String,
    /// A gazetteer URI of the area covered (e.g. GeoNames); the sensors' bounding box is added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spatial_uri: Option<String>,
    /// The place's identifier as Italian harvesters read it
    /// (`dcatapit:geographicalIdentifier`): a GeoNames or ISTAT URI, e.g.
    /// `https://www.geonames.org/<id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geographical_identifier: Option<String>,
    /// The place's name, given with the identifier (`locn:geographicalName`).
    pub geographical_name: String,
    /// EU frequency vocabulary code of how often the datasets change.
    pub accrual_periodicity: String,
    /// Languages of the metadata (EU language vocabulary codes).
    pub languages: Vec<String>,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        Self {
            title: "Sensori urbani del Comune di Cremona".into(),
            title_en: "Urban sensors of the City of Cremona".into(),
            description: "Dati aperti in tempo reale dei sensori della città: riempimento dei cassonetti, energia dell'illuminazione pubblica, contatori di biciclette e qualità dell'aria.".into(),
            description_en: "Real-time open data from the city's sensors: waste bin fill levels, street lighting energy, bicycle counters and air quality.".into(),
            publisher_name: "Comune di Cremona".into(),
            publisher_ipa: "c_d150".into(),
            rights_holder_name: None,
            rights_holder_ipa: None,
            homepage: "https://www.comune.cremona.it".into(),
            contact_name: "Comune di Cremona - Servizio Sistemi Informativi".into(),
            contact_email: "opendata@comune.cremona.it".into(),
            licence_url: "https://creativecommons.org/licenses/by/4.0/".into(),
            licence_name: "Creative Commons Attribuzione 4.0 Internazionale (CC BY 4.0)".into(),
            spatial_uri: None,
            geographical_identifier: None,
            geographical_name: "Cremona".into(),
            accrual_periodicity: "UPDATE_CONT".into(),
            languages: vec!["ITA".into(), "ENG".into()],
        }
    }
}

/// How readings are batched, checked, stored and acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// A batch closes when it holds this many observation rows...
    pub batch_max_rows: NonZeroUsize,
    /// ...or when its first message is this old, whichever comes first.
    pub batch_max_age_ms: u64,
    /// Larger payloads become dead letters (`oversize`).
    pub max_payload_bytes: usize,
    /// Whether HTTP uploads need the device's password: `auto`, `device` or `open`.
    pub upload_auth: UploadAuth,
    /// Refused HTTP uploads kept as dead letters per hour from one client (its device
    /// when it signed in, else its address); past it they are answered 422 but not
    /// kept, so one client cannot fill the disk with its refusals. 0 keeps none.
    pub upload_dead_letters_per_hour: u32,
    /// Readings timestamped further ahead than this become dead letters.
    pub max_future_s: i64,
    /// First pause before retrying a failed commit, doubled on each failure...
    pub retry_min_ms: u64,
    /// ...up to this many milliseconds.
    pub retry_max_ms: u64,
    /// A batch also closes at this many messages (dead letters included)...
    pub batch_max_messages: NonZeroUsize,
    /// ...or this many bytes of payloads and reasons, so no batch outgrows memory or
    /// PostgreSQL's message size, whatever the input.
    pub batch_max_bytes: NonZeroUsize,
    /// A dead letter keeps at most this much of its payload (the full length is recorded).
    pub dead_letter_payload_bytes: usize,
    /// ...and this much of its reason.
    pub dead_letter_reason_bytes: usize,
    /// Dead letters older than this many days are deleted, hourly (0 keeps them).
    pub dead_letter_retention_days: u32,
    /// The writer's `statement_timeout`: a stuck statement fails (and is retried)
    /// instead of holding the pipeline, and shutdown, without limit.
    pub statement_timeout_ms: NonZeroU64,
    /// The writer's `lock_timeout`: a statement waiting this long for a lock (a table
    /// locked by hand or by a migration) fails and is retried.
    pub lock_timeout_ms: NonZeroU64,
    /// A batch whose commit loses the connection this many times while the database
    /// answers otherwise is treated as poison and split to find the message at fault.
    pub poison_after_attempts: u32,
    /// `/readyz` says not ready while a message has waited longer than this for its commit.
    pub max_unacked_age_s: u64,
    /// After SIGTERM or SIGINT the process is gone within this many seconds: it drains
    /// until a second before, then exits (code 75 when it could not finish; a second
    /// signal exits at once); what is not committed by then is not acked, so the broker
    /// delivers it again.
    pub shutdown_timeout_s: NonZeroU64,
    /// Who may add a sensor: anyone who publishes (`open`), or only the registry (`known`:
    /// readings of unregistered sensors become `unregistered_sensor` dead letters). Use
    /// `known` in production, where anyone who can publish could otherwise fill the
    /// registry; `open` suits the demo and a first trial.
    pub registration: Registration,
    /// At most this many sensors are registered from readings (0: no limit); readings of
    /// sensors past it become `sensor_limit` dead letters. The default, many times a city's
    /// fleet, bounds what an open broker lets anyone add to the registry; raise it for a
    /// region.
    pub max_sensors: u32,
}

impl IngestSettings {
    /// Pauses between attempts to reach or write to the database.
    pub fn retry_backoff(&self) -> crate::Backoff {
        crate::Backoff::new(self.retry_min_ms, self.retry_max_ms)
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            batch_max_rows: nz(5000),
            batch_max_age_ms: 50,
            max_payload_bytes: 64 * 1024,
            upload_auth: UploadAuth::Auto,
            upload_dead_letters_per_hour: 60,
            max_future_s: 600,
            retry_min_ms: 100,
            retry_max_ms: 10_000,
            batch_max_messages: nz(5000),
            batch_max_bytes: nz(16 * 1024 * 1024),
            dead_letter_payload_bytes: 16 * 1024,
            dead_letter_reason_bytes: 1024,
            dead_letter_retention_days: 30,
            statement_timeout_ms: nz(30_000),
            lock_timeout_ms: nz(5_000),
            poison_after_attempts: 4,
            max_unacked_age_s: 120,
            shutdown_timeout_s: nz(20),
            registration: Registration::Open,
            max_sensors: 50_000,
        }
    }
}

/// Whether to use TimescaleDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimescaleMode {
    /// Use it when the server has it (installed and preloaded), plain PostgreSQL otherwise.
    Auto,
    /// Refuse to start without it.
    Require,
    /// Never use it.
    Off,
}

/// Retention, TimescaleDB and the upkeep jobs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Whether to use TimescaleDB.
    pub timescaledb: TimescaleMode,
    /// Days readings are kept: older ones are dropped by the retention job, and refused on
    /// arrival (`too_old` dead letters).
    pub retention_days: u32,
    /// TimescaleDB: a chunk (a week of readings) is compressed once its end is this many
    /// days old.
    pub compress_after_days: u32,
    /// TimescaleDB: who runs the compression, retention and refresh jobs.
    pub maintenance: MaintenanceMode,
    /// How often each hub reads the jobs' health (for `/readyz` and `/metrics`) and, as the
    /// elected leader, runs those due.
    pub maintenance_interval_s: u64,
    /// TimescaleDB: how soon after a commit below an aggregate's watermark the hub
    /// refreshes the buckets it touched; after a refresh that took longer than a ninth
    /// of this, nine times its length, so refreshes take at most a tenth of the time.
    pub late_refresh_s: u64,
    /// Plain PostgreSQL: how often the hub folds the rollup deltas of committed batches
    /// into the hourly and daily tables (answers include unfolded deltas anyway).
    pub rollup_fold_ms: u64,
    /// Days the audit trail (who changed what) is kept; 0 keeps it for ever.
    pub audit_retention_days: u32,
}

impl HttpSettings {
    /// The networks of `trusted_proxies`.
    pub fn trusted_proxy_nets(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies.iter().map(|n| n.0).collect()
    }
}

/// Whether HTTP uploads must carry a device's password (HTTP basic auth, user name =
/// the sensor id, as `cityhub devices provision` issued it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UploadAuth {
    /// Required once any device credential exists (a hub with none stays open).
    #[default]
    Auto,
    /// Always required.
    Device,
    /// Never asked (a closed network).
    Open,
}

/// Whether readings may register new sensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// A reading from a new sensor registers it (the demo, a city trying the hub).
    #[default]
    Open,
    /// Only sensors in the registry (`sensors import`, `PUT /api/v1/sensors/{id}`).
    Known,
}

/// Who runs TimescaleDB's policy jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceMode {
    /// TimescaleDB's scheduler; the hub (one of them, elected) runs a job itself when
    /// its last run failed or it is overdue.
    Auto,
    /// The elected hub runs every job on the job's schedule, whatever the scheduler does.
    Hub,
    /// Only TimescaleDB's scheduler; the hub reports failures and does nothing else.
    Timescaledb,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            timescaledb: TimescaleMode::Auto,
            retention_days: 730,
            audit_retention_days: 1095,
            compress_after_days: 7,
            maintenance: MaintenanceMode::Auto,
            maintenance_interval_s: 60,
            late_refresh_s: 2,
            rollup_fold_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Log lines, on standard error.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` for people, `json` (one object per line) for a log collector.
    pub format: LogFormat,
    /// `tracing` filter directives; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Everything the hub can be told.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub mqtt: MqttSettings,
    pub http: HttpSettings,
    pub ingest: IngestSettings,
    pub store: StoreSettings,
    pub log: LogSettings,
    pub catalog: CatalogSettings,
    pub alerts: crate::alerts::AlertSettings,
    pub notify: crate::alerts::NotifySettings,
    pub indicators: crate::indicators::IndicatorSettings,
    pub sta: StaSettings,
    pub kinds: BTreeMap<String, KindDef>,
    /// Network-server and community-network formats, each on its own topics.
    pub adapters: Vec<crate::adapters::AdapterDef>,
}

impl Settings {
    /// Defaults, then `file` (when given it must exist), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file)?)
    }

    /// The provider stack, exposed so tests can layer their own environment.
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        Ok(Self::defaults_and_file(file)?.merge(env_provider()))
    }

    /// Defaults and the built-in kinds, then `file` (which must exist when given).
    fn defaults_and_file(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let fig = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(DEFAULT_KINDS));
        match file {
            Some(path) if !path.exists() => Err(ConfigError::MissingFile(path.to_owned())),
            Some(path) => Ok(fig.merge(Toml::file(path))),
            None => Ok(fig),
        }
    }

    /// Defaults, then `file`, then `vars` read as the environment would be
    /// (`CITYHUB_HTTP_ADDR`, ...), but not the process environment itself: for hubs
    /// started in-process side by side, which must not share settings.
    pub fn load_with_vars<'a>(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut fig = Self::defaults_and_file(file)?;
        for (k, v) in vars {
            let Some(key) = k.strip_prefix("CITYHUB_").and_then(section_key) else {
                return Err(ConfigError::Invalid(format!("{k} names no setting")));
            };
            let value: figment::value::Value = v.parse().expect("parsing a Value never fails");
            fig = fig.merge(Serialized::default(&key, value));
        }
        Self::from_figment(fig)
    }

    /// The built-in defaults alone (no file, no environment): for tools and tests
    /// that need the standard catalogue.
    pub fn builtin() -> Result<Self, ConfigError> {
        Self::from_figment(Self::defaults_and_file(None)?)
    }

    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let mut s: Settings = fig.extract().map_err(Box::new)?;
        s.resolve_secret_files()?;
        s.validate()?;
        Ok(s)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(p) = &self.database.password_file {
            self.database.password = Some(read_secret(p)?);
        }
        if let Some(p) = &self.mqtt.password_file {
            self.mqtt.password = Some(read_secret(p)?);
        }
        if let Some(p) = &self.http.admin_token_file {
            self.http.admin_token = Some(read_secret(p)?);
        }
        if let Some(p) = &self.http.operator_token_file {
            self.http.operator_token = Some(read_secret(p)?);
        }
        for w in &mut self.notify.webhooks {
            if let Some(p) = &w.secret_file {
                w.secret = Some(read_secret(p)?);
            }
        }
        Ok(())
    }

    /// Each section checks itself; then what spans sections (sizes that must agree,
    /// kinds that adapters name).
    fn validate(&self) -> Result<(), ConfigError> {
        self.mqtt.validate().map_err(ConfigError::Invalid)?;
        self.http.validate().map_err(ConfigError::Invalid)?;
        self.ingest.validate().map_err(ConfigError::Invalid)?;
        self.catalog.validate().map_err(ConfigError::Invalid)?;
        self.indicators.validate().map_err(ConfigError::Invalid)?;
        if !self.sta.mqtt_topics.is_empty() {
            let sta: Vec<String> = vec!["v1.1".into(), "#".into()];
            for t in self.mqtt.topics.iter().chain(
                self.adapters
                    .iter()
                    .map(|a| a.topic())
                    .collect::<Vec<_>>()
                    .iter(),
            ) {
                let levels: Vec<String> = t.split('/').map(str::to_owned).collect();
                if filters_overlap(&levels, &sta) {
                    return Err(ConfigError::Invalid(format!(
                        "the subscription {t:?} would read the SensorThings observations the hub publishes on v1.1/...: narrow it or set sta.mqtt_topics = []"
                    )));
                }
            }
        }
        if self.mqtt.max_packet_bytes as usize <= self.ingest.max_payload_bytes {
            return Err(ConfigError::Invalid(
                "mqtt.max_packet_bytes must exceed ingest.max_payload_bytes".into(),
            ));
        }
        self.validate_kinds_and_adapters()
    }

    fn validate_kinds_and_adapters(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.kinds.get("alerts").is_some_and(|k| k.enabled) {
            return invalid(
                "kinds.alerts: the name is reserved (cityhub/v1/alerts/ carries the hub's alert messages)".into(),
            );
        }
        for (name, k) in &self.kinds {
            if k.enabled && !EU_THEMES.contains(&k.theme.as_str()) {
                return invalid(format!(
                    "kinds.{name}.theme {:?} is not an EU data-theme code ({})",
                    k.theme,
                    EU_THEMES.join(", ")
                ));
            }
        }
        let catalog = Catalog::from_defs(&self.kinds)?;
        for a in &self.adapters {
            for k in a.kind.iter().chain(a.kind_map.values()) {
                if catalog.get(k).is_none() {
                    return invalid(format!(
                        "adapter {:?}: kind {k:?} is not configured",
                        a.name
                    ));
                }
            }
            if a.kind.is_none()
                && a.kind_from.is_none()
                && a.format != crate::AdapterFormat::SensorCommunity
            {
                return invalid(format!("adapter {:?}: set kind or kind_from", a.name));
            }
        }
        Ok(())
    }

    /// Checks settings changed in code (a test's), as loading checks a file's.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }

    /// The validated kind catalogue.
    pub fn catalog(&self) -> Result<Catalog, CatalogError> {
        Catalog::from_defs(&self.kinds)
    }

    /// The effective configuration as TOML, secrets hidden.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    /// The subscription filters (native topics and adapters'), with the
    /// shared-subscription prefix when a group is set.
    /// Pairs of subscribed topic filters that some topic matches both: the broker may
    /// deliver such a message once per filter, and a reading without its own
    /// timestamp would then be stored twice (`sensor-community/#` beside `/+`).
    pub fn overlapping_filters(&self) -> Vec<(String, String)> {
        let mut topics = self.mqtt.topics.clone();
        topics.extend(self.adapters.iter().map(|a| a.topic()));
        topics.dedup();
        let mut out = Vec::new();
        for (i, a) in topics.iter().enumerate() {
            for b in &topics[i + 1..] {
                let levels = |t: &str| t.split('/').map(str::to_owned).collect::<Vec<_>>();
                if a != b && filters_overlap(&levels(a), &levels(b)) {
                    out.push((a.clone(), b.clone()));
                }
            }
        }
        out
    }

    pub fn subscription_filters(&self) -> Vec<String> {
        let mut topics = self.mqtt.topics.clone();
        for a in &self.adapters {
            let t = a.topic();
            if !topics.contains(&t) {
                topics.push(t);
            }
        }
        topics
            .iter()
            .map(|t| {
                if self.mqtt.share_group.is_empty() {
                    t.clone()
                } else {
                    format!("$share/{}/{}", self.mqtt.share_group, t)
                }
            })
            .collect()
    }
}

impl MqttSettings {
    fn validate(&self) -> Result<(), String> {
        if self.client_id.is_empty() {
            return Err(
                "mqtt.client_id must not be empty: the broker keeps the session under it".into(),
            );
        }
        if self.topics.is_empty() {
            return Err("mqtt.topics must list at least one topic filter".into());
        }
        if !self.share_group.is_empty() && self.share_group.contains(['/', '+', '#']) {
            return Err("mqtt.share_group must not contain '/', '+' or '#'".into());
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err("mqtt.client_cert_file and mqtt.client_key_file go together".into());
        }
        Ok(())
    }
}

impl HttpSettings {
    fn validate(&self) -> Result<(), String> {
        for (name, token) in [
            ("admin_token", &self.admin_token),
            ("operator_token", &self.operator_token),
        ] {
            if token.as_ref().is_some_and(|t| t.expose().len() < 16) {
                return Err(format!("http.{name} must be at least 16 characters"));
            }
        }
        let t = &self.tile_url;
        if !t.is_empty()
            && !(["{z}", "{x}", "{y}"].iter().all(|p| t.contains(p))
                && (t.starts_with("https://") || t.starts_with("http://")))
        {
            return Err(
                "http.tile_url must be an http(s) URL with {z}, {x} and {y}, or empty".into(),
            );
        }
        Ok(())
    }
}

impl IngestSettings {
    fn validate(&self) -> Result<(), String> {
        if self.dead_letter_reason_bytes < 64 {
            return Err("ingest.dead_letter_reason_bytes must be at least 64".into());
        }
        Ok(())
    }
}

impl CatalogSettings {
    fn validate(&self) -> Result<(), String> {
        for (what, u) in [
            ("licence_url", Some(&self.licence_url)),
            ("homepage", Some(&self.homepage)),
            ("spatial_uri", self.spatial_uri.as_ref()),
            (
                "geographical_identifier",
                self.geographical_identifier.as_ref(),
            ),
        ] {
            if u.is_some_and(|u| url::Url::parse(u).is_err()) {
                return Err(format!("catalog.{what} must be an absolute URL"));
            }
        }
        if !self.contact_email.contains('@') || self.contact_email.contains([' ', '<', '>']) {
            return Err("catalog.contact_email must be an e-mail address".into());
        }
        if self.publisher_ipa.trim().is_empty() {
            return Err("catalog.publisher_ipa (the publisher's IPA code) must be set".into());
        }
        if !self
            .accrual_periodicity
            .chars()
            .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
        {
            return Err(
                "catalog.accrual_periodicity must be an EU frequency code, e.g. UPDATE_CONT".into(),
            );
        }
        Ok(())
    }
}

/// Whether some topic matches both filters (MQTT: `+` one level, `#` the rest, and
/// `a/#` matches `a` too).
fn filters_overlap(a: &[String], b: &[String]) -> bool {
    match (a.first().map(String::as_str), b.first().map(String::as_str)) {
        (Some("#"), _) | (_, Some("#")) | (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some(x), Some(y)) => (x == "+" || y == "+" || x == y) && filters_overlap(&a[1..], &b[1..]),
    }
}

fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| Secret::new(s.trim_end_matches(['\n', '\r'])))
        .map_err(|source| ConfigError::SecretFile {
            path: path.to_owned(),
            source,
        })
}

/// `DATABASE_URL` -> `database.url`, `MQTT_CLIENT_ID` -> `mqtt.client_id`: the first
/// `_` separates the section from the key; `None` when no section starts the name.
fn section_key(k: &str) -> Option<String> {
    let k = k.to_ascii_lowercase();
    SECTIONS
        .iter()
        .any(|s| k.starts_with(s) && k[s.len()..].starts_with('_'))
        .then(|| k.replacen('_', ".", 1))
}

/// `CITYHUB_DATABASE_URL` -> `database.url` (see [`section_key`]); other variables are ignored.
fn env_provider() -> Env {
    Env::prefixed("CITYHUB_")
        .filter(|k| section_key(k.as_str()).is_some())
        .map(|k| section_key(k.as_str()).unwrap_or_default().into())
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn a_subscription_that_would_read_the_published_observations_is_refused() {
        let e = Settings::load_with_vars(None, [("CITYHUB_MQTT_TOPICS", "[\"#\"]")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("v1.1") && e.contains("sta.mqtt_topics"), "{e}");
        let off = [
            ("CITYHUB_MQTT_TOPICS", "[\"#\"]"),
            ("CITYHUB_STA_MQTT_TOPICS", "[]"),
        ];
        assert!(Settings::load_with_vars(None, off).is_ok());
        assert!(
            Settings::load_with_vars(None, [("CITYHUB_MQTT_TOPICS", "[\"city/+/#\"]")]).is_ok()
        );
    }

    #[test]
    fn a_value_its_type_refuses_is_an_error_naming_the_key() {
        for (var, value, words) in [
            (
                "CITYHUB_INGEST_BATCH_MAX_ROWS",
                "0",
                ["ingest.batch_max_rows", "nonzero"],
            ),
            (
                "CITYHUB_NOTIFY_TIMEOUT_S",
                "0",
                ["notify.timeout_s", "nonzero"],
            ),
            (
                "CITYHUB_HTTP_TRUSTED_PROXIES",
                "[\"10.0.0.0/33\"]",
                ["http.trusted_proxies", "CIDR"],
            ),
            (
                "CITYHUB_HTTP_PUBLIC_URL",
                "dati.example.it",
                ["http.public_url", "http(s) URL"],
            ),
        ] {
            let e = Settings::load_with_vars(None, [(var, value)])
                .unwrap_err()
                .to_string();
            for w in words {
                assert!(e.contains(w), "{var}={value}: {e}");
            }
        }
    }

    #[test]
    fn overlapping_subscription_filters_are_found() {
        let o = |a: &str, b: &str| {
            let l = |t: &str| t.split('/').map(str::to_owned).collect::<Vec<_>>();
            filters_overlap(&l(a), &l(b))
        };
        assert!(o("sensor-community/#", "sensor-community/+"));
        assert!(o("sensor-community/#", "sensor-community"));
        assert!(o("cityhub/v1/#", "cityhub/+/waste_bin/+"));
        assert!(o("a/+/c", "a/b/+"));
        assert!(!o("cityhub/v1/#", "application/+/device/+/event/up"));
        assert!(!o("a/+", "a/b/c"));
        assert!(!o("a/b", "a/c"));
        let mut s = Settings::builtin().unwrap();
        assert!(s.overlapping_filters().is_empty(), "the defaults overlap");
        s.mqtt.topics.push("cityhub/+/waste_bin/#".into());
        assert_eq!(
            s.overlapping_filters(),
            [(
                "cityhub/v1/#".to_owned(),
                "cityhub/+/waste_bin/#".to_owned()
            )]
        );
    }

    #[test]
    fn defaults_have_the_four_kinds() {
        Jail::expect_with(|_| {
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let cat = s.catalog().unwrap();
            let names: Vec<_> = cat.iter().map(|k| k.name.to_string()).collect();
            assert_eq!(
                names,
                ["air_quality", "bike_counter", "streetlight", "waste_bin"]
            );
            assert_eq!(
                cat.get("waste_bin")
                    .unwrap()
                    .metric("fill_level")
                    .unwrap()
                    .max,
                Some(100.0)
            );
            Ok(())
        });
    }

    #[test]
    fn vars_layer_like_the_environment_without_touching_it() {
        Jail::expect_with(|jail| {
            jail.set_env("CITYHUB_MQTT_CLIENT_ID", "from-the-process-env");
            let s = Settings::load_with_vars(
                None,
                [
                    ("CITYHUB_HTTP_ADDR", "127.0.0.1:0"),
                    ("CITYHUB_INGEST_BATCH_MAX_ROWS", "7"),
                ],
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(s.http.addr, "127.0.0.1:0");
            assert_eq!(s.ingest.batch_max_rows.get(), 7);
            assert_eq!(
                s.mqtt.client_id, "cityhub-ingest",
                "the process env leaked in"
            );
            let e = Settings::load_with_vars(None, [("CITYHUB_NOPE", "1")]).unwrap_err();
            assert!(e.to_string().contains("CITYHUB_NOPE"), "{e}");
            let e = Settings::load_with_vars(None, [("CITYHUB_INGEST_NO_SUCH_KEY", "1")]);
            assert!(e.is_err(), "unknown keys are refused as in files");
            Ok(())
        });
    }

    #[test]
    fn file_then_env_layering_and_new_kind() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                r#"
                [mqtt]
                client_id = "from-file"
                share_group = "g1"
                [ingest]
                batch_max_rows = 10
                [kinds.parking]
                title = "Parking occupancy"
                metrics = { occupied = { unit = "count", min = 0, max = 1 } }
                [kinds.bike_counter]
                enabled = false
                "#,
            )?;
            jail.set_env("CITYHUB_MQTT_CLIENT_ID", "from-env");
            jail.set_env("CITYHUB_DATABASE_URL", "postgres://u:hunter2@db/x");
            jail.set_env("CITYHUB_HTTP_ADDR", "0.0.0.0:9999");
            jail.set_env("CITYHUB_CONFIG", "ignored: not a section");
            let s = Settings::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.mqtt.client_id, "from-env");
            assert_eq!(s.http.addr, "0.0.0.0:9999");
            assert_eq!(s.ingest.batch_max_rows.get(), 10);
            assert_eq!(s.ingest.batch_max_age_ms, 50);
            assert_eq!(s.subscription_filters(), ["$share/g1/cityhub/v1/#"]);
            let cat = s.catalog().unwrap();
            assert!(cat.get("parking").is_some());
            assert!(cat.get("bike_counter").is_none());
            let printed = s.to_redacted_toml();
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(printed.contains("postgres://u:***@db/x"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[mqtt]\nclientid = \"typo\"\n")?;
            let err = Settings::load(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("clientid"), "{err}");
            jail.create_file("d.toml", "[kinds.x]\ntitle = \"x\"\nmetrics = { a = { unit = \"%\", min = 0, max = 1, colour = 3 } }\n")?;
            assert!(Settings::load(Some(Path::new("d.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn secrets_from_files_are_hidden() {
        Jail::expect_with(|jail| {
            jail.create_file("pw", "s3cret\n")?;
            jail.create_file("hook", "h00ksecret\n")?;
            jail.create_file(
                "c.toml",
                "[[notify.webhooks]]\nurl = \"https://example.org/hook\"\nsecret_file = \"hook\"\n",
            )?;
            jail.set_env("CITYHUB_MQTT_PASSWORD_FILE", "pw");
            jail.set_env("CITYHUB_DATABASE_PASSWORD", "dbpass");
            let s = Settings::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.mqtt.password.as_ref().unwrap().expose(), "s3cret");
            assert_eq!(
                s.notify.webhooks[0].secret.as_ref().unwrap().expose(),
                "h00ksecret"
            );
            assert_eq!(s.database.password.as_ref().unwrap().expose(), "dbpass");
            let printed = s.to_redacted_toml();
            assert!(
                !printed.contains("s3cret")
                    && !printed.contains("dbpass")
                    && !printed.contains("h00ksecret"),
                "{printed}"
            );
            assert!(!format!("{s:?}").contains("s3cret"));
            Ok(())
        });
    }

    #[test]
    fn bad_kind_config_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[kinds.x]\ntitle = \"x\"\nmetrics = { a = { unit = \"%\", min = 5, max = 1 } }\n",
            )?;
            let err = Settings::load(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("min 5 is above max 1"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn map_rules_are_checked_against_the_kind() {
        Jail::expect_with(|jail| {
            let cases = [
                (
                    "map = { rule = \"above\", metric = \"b\", warn = 1, alarm = 2 }",
                    "\"b\" is not one of its metrics",
                ),
                (
                    "map = { rule = \"above\", metric = \"a\", warn = 3, alarm = 2 }",
                    "warn 3 must not be above alarm 2",
                ),
                (
                    "map = { rule = \"activity\", metric = \"a\", steps = [5, 5] }",
                    "ascending",
                ),
                ("map = { rule = \"lamp\", metric = \"a\" }", "lit_above"),
                ("map = { rule = \"glow\", metric = \"a\" }", "glow"),
            ];
            for (rule, want) in cases {
                jail.create_file(
                    "c.toml",
                    &format!("[kinds.x]\ntitle = \"x\"\n{rule}\nmetrics = {{ a = {{ unit = \"%\" }} }}\n"),
                )?;
                let err = Settings::load(Some(Path::new("c.toml")))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(want), "{rule}: {err}");
            }
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let cat = s.catalog().unwrap();
            for k in cat.iter() {
                assert!(
                    k.def.map.is_some(),
                    "built-in kind {} has no map rule",
                    k.name
                );
            }
            Ok(())
        });
    }
}
