//! The sensors listing and the open-data feeds, answered from memory.
//!
//! A city's whole fleet is one document that every map and app polls. Building it per
//! request (a query over every sensor, then JSON) cost ~180 ms and 19 MB at 28,000
//! sensors, per request. Here each sensor's GeoJSON is serialized once, when it
//! changes; a document is assembled (and gzipped, on first demand) once per change and
//! shared by every request, so a request costs a lookup and its memory does not grow
//! with the fleet.
//!
//! Freshness: this process's writers note the sensors each commit changed
//! (`Store::note_changed`); a request that finds changes newer than the documents
//! refetches only those sensors before answering, so a reading is in the listing as
//! soon as its commit is. Changes made by other processes (another hub on the same
//! database, `cityhub sensors import`) arrive with a whole reload, every
//! `http.snapshot_reload_s`, done in the background. The first load is done as the
//! hub starts ([`Snapshot::warm`]), so no visitor waits for it once it is done, and
//! from then on a refresher takes commits in within `http.snapshot_max_lag_ms`.

use crate::error::{ApiError, ApiResult};
use crate::geo::sensor_feature;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cityhub_store::query::{self, Bbox, SensorFilter, SensorView};
use cityhub_store::Store;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sensors fetched per query of a whole reload, so its memory stays bounded.
const RELOAD_CHUNK: i64 = 10_000;

/// Sensors per range of a whole load, and ranges in flight at once (fetched or being
/// built): the load's memory beyond the model is about this many sensors' rows. With
/// three ranges of 10,000 the hub serving 40 listings of 100,000 peaked at 254-259 MiB
/// (tests/serving.rs allows 256), one at a time at 234 MiB.
const LOAD_RANGE: i64 = 5_000;

/// The refresher takes commits in while the documents were asked for within this
/// long (or the hub started within it): a hub nobody reads from does not refetch its
/// changed sensors four times a second, and the first request after such a pause
/// waits for the commits since.
const REFRESH_IDLE: Duration = Duration::from_secs(300);
const LOAD_AHEAD: usize = 3;

/// A sensor as the listing and the map's fleet need it.
struct Entry {
    kind: Arc<str>,
    lon: Option<f64>,
    lat: Option<f64>,
    modified: Option<DateTime<Utc>>,
    name: Option<Box<str>>,
    /// Its last report (the latest of `last_seen` and its readings), ms since the epoch.
    seen_ms: Option<i64>,
    /// The latest value of the metric the map judges its kind by, and when it was read.
    judged: Option<(f64, i64)>,
    /// Its GeoJSON Feature, serialized, shared with the documents that hold it.
    feature: Arc<[u8]>,
    /// A hash of `feature`; a document's ETag combines those of its sensors.
    hash: u64,
}

impl Entry {
    fn new(
        v: &SensorView,
        kinds: &mut HashMap<String, Arc<str>>,
        judged_by: &HashMap<String, String>,
    ) -> ApiResult<Self> {
        let kind = kinds
            .entry(v.kind.clone())
            .or_insert_with(|| Arc::from(v.kind.as_str()))
            .clone();
        let feature = crate::cache::to_json(&sensor_feature(v))?;
        let seen_ms = v
            .latest
            .iter()
            .map(|l| l.time)
            .chain(v.last_seen)
            .max()
            .map(|t| t.timestamp_millis());
        let judged = judged_by.get(&v.kind).and_then(|m| {
            v.latest
                .iter()
                .find(|l| l.metric == *m)
                .map(|l| (l.value, l.time.timestamp_millis()))
        });
        Ok(Entry {
            kind,
            lon: v.lon,
            lat: v.lat,
            modified: crate::geo::last_modified(std::slice::from_ref(v)),
            name: v.name.as_deref().map(Box::from),
            seen_ms,
            judged,
            hash: hash_of(&feature),
            feature: feature.into(),
        })
    }

    fn inside(&self, b: &Bbox) -> bool {
        let (Some(lon), Some(lat)) = (self.lon, self.lat) else {
            return false;
        };
        let lon_ok = if b.min_lon <= b.max_lon {
            (b.min_lon..=b.max_lon).contains(&lon)
        } else {
            lon >= b.min_lon || lon <= b.max_lon
        };
        lon_ok && (b.min_lat..=b.max_lat).contains(&lat)
    }
}

struct Model {
    sensors: BTreeMap<String, Entry>,
    /// Interned kind names.
    kinds: HashMap<String, Arc<str>>,
    /// Sensors refetched while a background reload ran: theirs are the newer rows.
    refetched: Option<HashSet<String>>,
    loaded_at: Option<Instant>,
}

fn hash_of(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(b);
    h.finish()
}

/// A document's bytes: whole, or the features of many sensors between a head and a
/// tail, shared with the model (so a listing of the whole fleet is not a second copy).
#[derive(Clone)]
pub enum Body {
    Whole(Bytes),
    Joined(Arc<Joined>),
}

pub struct Joined {
    head: Bytes,
    parts: Vec<Arc<[u8]>>,
    tail: Bytes,
}

impl Joined {
    /// The bytes in pieces of about 64 KiB, for the response stream and for gzip.
    fn pieces(self: Arc<Self>) -> impl Iterator<Item = Bytes> + Send {
        const PIECE: usize = 64 * 1024;
        let mut next = 0usize;
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let mut buf = Vec::with_capacity(PIECE + 1024);
            if next == 0 {
                buf.extend_from_slice(&self.head);
            }
            while next < self.parts.len() && buf.len() < PIECE {
                if next > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(&self.parts[next]);
                next += 1;
            }
            if next == self.parts.len() {
                buf.extend_from_slice(&self.tail);
                done = true;
            }
            Some(Bytes::from(buf))
        })
    }
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Whole(b) => b.len(),
            Body::Joined(j) => {
                j.head.len()
                    + j.tail.len()
                    + j.parts.iter().map(|p| p.len()).sum::<usize>()
                    + j.parts.len().saturating_sub(1)
            }
        }
    }

    /// The response body: a rope is sent piece by piece, so no request copies it whole.
    pub fn to_axum(&self) -> axum::body::Body {
        match self {
            Body::Whole(b) => axum::body::Body::from(b.clone()),
            Body::Joined(j) => axum::body::Body::from_stream(futures_util::stream::iter(
                j.clone().pieces().map(Ok::<_, std::convert::Infallible>),
            )),
        }
    }
}

/// A document ready to send: body, validators, and its gzip form once asked for.
pub struct Doc {
    epoch: u64,
    pub body: Body,
    pub etag: String,
    pub modified: Option<DateTime<Utc>>,
    gzip: tokio::sync::OnceCell<Bytes>,
}

impl Doc {
    pub fn new(epoch: u64, body: Vec<u8>, modified: Option<DateTime<Utc>>) -> Self {
        let etag = format!("\"{:016x}-{:x}\"", hash_of(&body), body.len());
        Doc {
            epoch,
            etag,
            body: Body::Whole(Bytes::from(body)),
            modified,
            gzip: tokio::sync::OnceCell::new(),
        }
    }

    fn joined(
        epoch: u64,
        joined: Joined,
        hashes: impl Iterator<Item = u64>,
        modified: Option<DateTime<Utc>>,
    ) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(&joined.head);
        for x in hashes {
            h.write_u64(x);
        }
        h.write(&joined.tail);
        let body = Body::Joined(Arc::new(joined));
        Doc {
            epoch,
            etag: format!("\"{:016x}-{:x}\"", h.finish(), body.len()),
            body,
            modified,
            gzip: tokio::sync::OnceCell::new(),
        }
    }

    /// The body gzipped (computed once per document, off the async threads).
    pub async fn gzip(&self) -> ApiResult<Bytes> {
        let body = self.body.clone();
        self.gzip
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    let mut e = flate2::write::GzEncoder::new(
                        Vec::with_capacity(body.len() / 8),
                        flate2::Compression::fast(),
                    );
                    match &body {
                        Body::Whole(b) => e.write_all(b)?,
                        Body::Joined(j) => {
                            for p in j.clone().pieces() {
                                e.write_all(&p)?;
                            }
                        }
                    }
                    e.finish().map(Bytes::from)
                })
                .await
                .map_err(|e| ApiError::Internal(format!("gzip task: {e}")))?
                .map_err(|e| ApiError::Internal(format!("gzip: {e}")))
            })
            .await
            .cloned()
    }
}

/// Documents cached per change, keyed by what they hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DocKey {
    /// `/api/v1/sensors`, of one kind or all.
    Listing(Option<String>),
    /// `/feeds/{kind}.{ext}`.
    Feed(String, String),
    /// `/map/fleet.json`.
    Fleet,
}

/// The in-memory listing of one hub. Shared by every request.
pub struct Snapshot {
    model: tokio::sync::Mutex<Model>,
    docs: Mutex<HashMap<DocKey, Arc<Doc>>>,
    /// Bumped whenever the model changes; documents of an older epoch are stale.
    epoch: AtomicU64,
    /// The store's change generation the model has taken in.
    covered: AtomicU64,
    loaded: AtomicBool,
    reloading: AtomicBool,
    reload_every: Duration,
    /// Serializes the builds of feeds (database queries), one at a time.
    feeds: tokio::sync::Mutex<()>,
    /// The configured kinds: the listing's sensors.
    kinds: Vec<String>,
    /// Per kind, the metric the map judges its sensors by (its map rule's, else its main metric).
    judged_by: HashMap<String, String>,
    /// How long a commit may wait for the background refresher (see `http.snapshot_max_lag_ms`).
    max_lag: Duration,
    refresher: AtomicBool,
    /// When the listing, the map's fleet or a feed was last asked for (or the hub started).
    asked: Mutex<Instant>,
    /// Ends the refresher and reloads with the server.
    shutdown: tokio_util::sync::CancellationToken,
}

impl Snapshot {
    pub fn new(
        reload_every: Duration,
        max_lag: Duration,
        kinds: Vec<String>,
        judged_by: HashMap<String, String>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Snapshot {
            model: tokio::sync::Mutex::new(Model {
                sensors: BTreeMap::new(),
                kinds: HashMap::new(),
                refetched: None,
                loaded_at: None,
            }),
            docs: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            reloading: AtomicBool::new(false),
            reload_every,
            feeds: tokio::sync::Mutex::new(()),
            kinds,
            judged_by,
            max_lag,
            refresher: AtomicBool::new(false),
            asked: Mutex::new(Instant::now()),
            shutdown,
        })
    }

    /// The cached document for `key`, if it may be sent: it holds every commit noted,
    /// or (with a lag allowed) the ones it lacks are younger than the lag, or being
    /// taken in by the refresher.
    fn current(&self, store: &Store, key: &DocKey) -> Option<Arc<Doc>> {
        if self.must_refresh(store) {
            return None;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        docs.get(key).filter(|d| d.epoch == epoch).cloned()
    }

    /// Whether the model lacks commits a request may not go without.
    fn must_refresh(&self, store: &Store) -> bool {
        !self.loaded.load(Ordering::Acquire)
            || (store.changes_seen() > self.covered.load(Ordering::Acquire)
                && (self.max_lag.is_zero()
                    || store.changes_waiting().is_some_and(|w| w >= self.max_lag)))
    }

    fn keep(&self, key: DocKey, doc: Arc<Doc>) {
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.epoch.load(Ordering::Acquire);
        docs.retain(|_, d| d.epoch == epoch);
        docs.insert(key, doc);
    }

    /// Takes in every change noted so far (the first call, [`Snapshot::warm`]'s unless a
    /// request came first, loads the whole fleet).
    async fn refresh(self: &Arc<Self>, store: &Store, m: &mut Model) -> ApiResult<()> {
        if m.loaded_at.is_none() {
            let changes = store.take_changes();
            let (sensors, kinds) = load_all(store, &self.kinds, &self.judged_by).await?;
            m.sensors = sensors;
            m.kinds = kinds;
            m.loaded_at = Some(Instant::now());
            self.covered.store(changes.generation, Ordering::Release);
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.loaded.store(true, Ordering::Release);
            return Ok(());
        }
        if m.loaded_at
            .is_some_and(|t| t.elapsed() >= self.reload_every)
            && !self.reloading.swap(true, Ordering::AcqRel)
        {
            m.refetched = Some(HashSet::new());
            let (me, store) = (self.clone(), store.clone());
            tokio::spawn(async move {
                let stop = me.shutdown.clone();
                tokio::select! {
                    _ = me.reload(&store) => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        if store.changes_seen() <= self.covered.load(Ordering::Acquire) {
            return Ok(());
        }
        let changes = store.take_changes();
        if !changes.sensors.is_empty() {
            let ids: Vec<String> = changes.sensors.into_iter().collect();
            for (i, chunk) in ids.chunks(RELOAD_CHUNK as usize).enumerate() {
                let rows = query::sensors(
                    store,
                    &SensorFilter {
                        kinds: self.kinds.clone(),
                        ids: Some(chunk.to_vec()),
                        ..Default::default()
                    },
                )
                .await;
                let rows = match rows {
                    Ok(r) => r,
                    Err(e) => {
                        // This chunk and the ones after it are noted again, so the
                        // next refresh fetches them.
                        let rest = &ids[i * RELOAD_CHUNK as usize..];
                        store.note_changed(rest.iter().map(String::as_str));
                        return Err(e.into());
                    }
                };
                let mut found = HashSet::with_capacity(rows.len());
                for v in &rows {
                    found.insert(v.id.as_str());
                    let e = Entry::new(v, &mut m.kinds, &self.judged_by)?;
                    m.sensors.insert(v.id.clone(), e);
                }
                for id in chunk {
                    if !found.contains(id.as_str()) {
                        m.sensors.remove(id);
                    }
                    if let Some(r) = &mut m.refetched {
                        r.insert(id.clone());
                    }
                }
            }
        }
        self.covered.store(changes.generation, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Loads the whole fleet, unless a request already did, and starts the refresher:
    /// called as the hub starts, so the first map or listing request finds it in
    /// memory instead of waiting for the load (1.2 s at 100,000 sensors). Requests
    /// that come meanwhile wait for this load; they do not start their own.
    pub async fn warm(self: &Arc<Self>, store: &Store) -> ApiResult<()> {
        let mut m = self.model.lock().await;
        if m.loaded_at.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        self.refresh(store, &mut m).await?;
        tracing::info!(
            sensors = m.sensors.len(),
            ms = started.elapsed().as_millis() as u64,
            "Sensors listing loaded."
        );
        // Commits from now on are taken in as they come, not by the first request:
        // under ingest, that request found every commit since the start older than
        // the lag and waited for all of them (700-760 ms, the API bench's slowest).
        self.ensure_refresher(store);
        Ok(())
    }

    /// Starts the refresher once, when a lag is allowed, and notes that the listing is
    /// wanted (see [`REFRESH_IDLE`]).
    fn ensure_refresher(self: &Arc<Self>, store: &Store) {
        *self.asked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if !self.max_lag.is_zero() && !self.refresher.swap(true, Ordering::AcqRel) {
            let (me, store, stop) = (Arc::downgrade(self), store.clone(), self.shutdown.clone());
            let pause = self.max_lag / 4;
            tokio::spawn(async move {
                tokio::select! {
                    _ = Self::refresher(me, store, pause) => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    }

    /// Takes commits in as they are noted, and prepares the whole listing, so requests
    /// find a current document; ends with the snapshot.
    async fn refresher(me: std::sync::Weak<Self>, store: Store, pause: Duration) {
        loop {
            store.changed().await;
            // Nobody asked for a while: commits wait for the next request.
            match me.upgrade() {
                None => return,
                Some(me)
                    if me.asked.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
                        > REFRESH_IDLE =>
                {
                    continue
                }
                Some(_) => {}
            }
            // Commits in the pause are taken in at once: a sensor that reported several
            // times is fetched once. The pause counts from the oldest commit waiting:
            // while the last round took in its commits, the next ones already waited,
            // and a full pause on top of that let them age past the lag, so requests
            // refreshed the listing themselves.
            let waited = store.changes_waiting().unwrap_or_default();
            tokio::time::sleep(pause.saturating_sub(waited)).await;
            let Some(me) = me.upgrade() else {
                return;
            };
            let started = Instant::now();
            match me.listing_now(&store, None).await {
                Ok(_) => tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    waited_ms = waited.as_millis() as u64,
                    "Sensors listing took in the latest commits."
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "The sensors listing could not take in the latest commits; requests will try again.")
                }
            }
        }
    }

    /// A whole reload, off the request path; sensors refetched meanwhile keep their newer rows.
    async fn reload(&self, store: &Store) {
        let loaded = load_all(store, &self.kinds, &self.judged_by).await;
        let mut m = self.model.lock().await;
        let refetched = m.refetched.take().unwrap_or_default();
        match loaded {
            Ok((mut sensors, kinds)) => {
                for id in refetched {
                    match m.sensors.remove(&id) {
                        Some(e) => sensors.insert(id, e),
                        None => sensors.remove(&id),
                    };
                }
                m.sensors = sensors;
                m.kinds = kinds;
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                tracing::warn!(error = %e, "The sensors listing could not be reloaded; it keeps what it had.")
            }
        }
        m.loaded_at = Some(Instant::now());
        self.reloading.store(false, Ordering::Release);
    }

    /// The listing of `kind` (or of all kinds), current as of this process's last commit.
    pub async fn listing(
        self: &Arc<Self>,
        store: &Store,
        kind: Option<String>,
    ) -> ApiResult<Arc<Doc>> {
        self.ensure_refresher(store);
        if let Some(d) = self.current(store, &DocKey::Listing(kind.clone())) {
            return Ok(d);
        }
        tracing::debug!(
            behind = self.must_refresh(store),
            "A listing request waits for the latest commits."
        );
        self.listing_now(store, kind).await
    }

    /// The listing as of now: every change noted so far taken in.
    async fn listing_now(
        self: &Arc<Self>,
        store: &Store,
        kind: Option<String>,
    ) -> ApiResult<Arc<Doc>> {
        self.doc_now(store, DocKey::Listing(kind.clone()), |m, epoch| {
            let all = Selection::of(
                m,
                |e| kind.as_deref().is_none_or(|k| *e.kind == *k),
                None,
                usize::MAX,
            );
            let tail = format!(r#""numberReturned":{}"#, all.returned);
            all.into_doc(epoch, &tail)
        })
        .await
    }

    /// The whole fleet as the operator map draws it: one array per field (see
    /// [`fleet_json`]), about a tenth of the listing's bytes; current as the listing is.
    pub async fn fleet(self: &Arc<Self>, store: &Store) -> ApiResult<Arc<Doc>> {
        self.ensure_refresher(store);
        if let Some(d) = self.current(store, &DocKey::Fleet) {
            return Ok(d);
        }
        self.doc_now(store, DocKey::Fleet, |m, epoch| {
            let modified = m.sensors.values().filter_map(|e| e.modified).max();
            Doc::new(epoch, fleet_json(m, &self.judged_by), modified)
        })
        .await
    }

    /// The document `key` as of now, built by `build` from the model with every change
    /// noted so far taken in (unless another request built it meanwhile), and kept.
    async fn doc_now(
        self: &Arc<Self>,
        store: &Store,
        key: DocKey,
        build: impl FnOnce(&Model, u64) -> Doc,
    ) -> ApiResult<Arc<Doc>> {
        let mut m = self.model.lock().await;
        if store.changes_seen() <= self.covered.load(Ordering::Acquire) {
            if let Some(d) = self.current(store, &key) {
                return Ok(d);
            }
        }
        self.refresh(store, &mut m).await?;
        let doc = Arc::new(build(&m, self.epoch.load(Ordering::Acquire)));
        self.keep(key, doc.clone());
        Ok(doc)
    }

    /// Sensors of `kind` inside `bbox`, after `after`, at most `limit`; `tail` gives
    /// the collection's members after `features`.
    pub async fn select(
        self: &Arc<Self>,
        store: &Store,
        kind: Option<&str>,
        bbox: Option<Bbox>,
        after: Option<&str>,
        limit: usize,
        tail: impl FnOnce(&Selection) -> String,
    ) -> ApiResult<Doc> {
        self.ensure_refresher(store);
        let mut m = self.model.lock().await;
        if self.must_refresh(store) {
            self.refresh(store, &mut m).await?;
        }
        let keep = |e: &Entry| {
            kind.is_none_or(|k| *e.kind == *k) && bbox.as_ref().is_none_or(|b| e.inside(b))
        };
        let sel = Selection::of(&m, keep, after, limit);
        drop(m);
        let tail = tail(&sel);
        Ok(sel.into_doc(0, &tail))
    }

    /// A feed document, built by `build` from the database once per change.
    pub async fn feed<F, Fut>(
        self: &Arc<Self>,
        store: &Store,
        kind: &str,
        ext: &str,
        build: F,
    ) -> ApiResult<Arc<Doc>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ApiResult<(Vec<u8>, Option<DateTime<Utc>>)>>,
    {
        self.ensure_refresher(store);
        let key = DocKey::Feed(kind.to_owned(), ext.to_owned());
        if let Some(d) = self.current(store, &key) {
            return Ok(d);
        }
        let _one = self.feeds.lock().await;
        {
            let mut m = self.model.lock().await;
            if let Some(d) = self.current(store, &key) {
                return Ok(d);
            }
            self.refresh(store, &mut m).await?;
        }
        // Read after the refresh: a commit landing meanwhile makes this document stale
        // at once, never wrongly current.
        let epoch = self.epoch.load(Ordering::Acquire);
        let (body, modified) = build().await?;
        let doc = Arc::new(Doc::new(epoch, body, modified));
        self.keep(key, doc.clone());
        Ok(doc)
    }
}

/// Every sensor of the configured kinds, in ranges of keys fetched side by side: the
/// database answers the next ranges while the hub builds a range's entries (at
/// 100,000 sensors, one range at a time spent 1.5 s in queries and 0.6 s in entries,
/// one after the other).
async fn load_all(
    store: &Store,
    kinds_wanted: &[String],
    judged_by: &HashMap<String, String>,
) -> ApiResult<(BTreeMap<String, Entry>, HashMap<String, Arc<str>>)> {
    let mut sensors = BTreeMap::new();
    let mut kinds: HashMap<String, Arc<str>> = HashMap::new();
    let ranges = query::sensor_key_ranges(store, LOAD_RANGE).await?;
    let judged_by = Arc::new(judged_by.clone());
    let mut loaded = futures_util::stream::iter(ranges)
        .map(|keys| {
            let judged_by = judged_by.clone();
            async move {
                let rows = query::sensors(
                    store,
                    &SensorFilter {
                        kinds: kinds_wanted.to_vec(),
                        keys: Some(keys),
                        ..Default::default()
                    },
                )
                .await?;
                tokio::task::spawn_blocking(move || {
                    let mut kinds = HashMap::new();
                    rows.iter()
                        .map(|v| Ok((v.id.clone(), Entry::new(v, &mut kinds, &judged_by)?)))
                        .collect::<ApiResult<Vec<_>>>()
                })
                .await
                .map_err(|e| ApiError::Internal(format!("building the listing's entries: {e}")))?
            }
        })
        .buffer_unordered(LOAD_AHEAD);
    while let Some(entries) = loaded.try_next().await? {
        for (id, mut e) in entries {
            // One shared name per kind across the ranges, each built with its own.
            match kinds.get(&*e.kind) {
                Some(k) => e.kind = k.clone(),
                None => {
                    kinds.insert(e.kind.to_string(), e.kind.clone());
                }
            }
            sensors.insert(id, e);
        }
    }
    Ok((sensors, kinds))
}

/// The sensors `keep` accepts (`matched`); of those, at most `limit` after the cursor.
pub struct Selection {
    parts: Vec<Arc<[u8]>>,
    hashes: Vec<u64>,
    pub returned: usize,
    pub matched: usize,
    modified: Option<DateTime<Utc>>,
    /// The id of the last feature returned, when more follow it.
    pub next: Option<String>,
}

impl Selection {
    fn of(m: &Model, keep: impl Fn(&Entry) -> bool, after: Option<&str>, limit: usize) -> Self {
        let mut sel = Selection {
            parts: Vec::new(),
            hashes: Vec::new(),
            returned: 0,
            matched: 0,
            modified: None,
            next: None,
        };
        let mut last: Option<&String> = None;
        let mut more = false;
        for (id, e) in &m.sensors {
            if !keep(e) {
                continue;
            }
            sel.matched += 1;
            if after.is_some_and(|a| id.as_str() <= a) {
                continue;
            }
            if sel.parts.len() == limit {
                more = true;
                continue;
            }
            sel.parts.push(e.feature.clone());
            sel.hashes.push(e.hash);
            sel.modified = sel.modified.max(e.modified);
            last = Some(id);
        }
        sel.returned = sel.parts.len();
        sel.next = more.then(|| last.cloned()).flatten();
        sel
    }

    /// `{"type":"FeatureCollection","features":[...],` + `tail` + `}`.
    fn into_doc(self, epoch: u64, tail: &str) -> Doc {
        let joined = Joined {
            head: Bytes::from_static(br#"{"type":"FeatureCollection","features":["#),
            parts: self.parts,
            tail: Bytes::from(format!("],{tail}}}")),
        };
        Doc::joined(epoch, joined, self.hashes.into_iter(), self.modified)
    }
}

/// The map's fleet, one array per field: member i of every array is sensor i (in id
/// order); `kind` indexes `kinds`; `seen` (last report) and `at` (when `value`, its
/// kind's judged metric, was read) are ms since the epoch; null where unknown.
#[derive(serde::Serialize)]
struct Fleet<'a> {
    count: usize,
    kinds: Vec<&'a str>,
    judged_by: BTreeMap<&'a str, &'a str>,
    id: Vec<&'a str>,
    name: Vec<Option<&'a str>>,
    kind: Vec<usize>,
    lon: Vec<Option<f64>>,
    lat: Vec<Option<f64>>,
    seen: Vec<Option<i64>>,
    value: Vec<Option<f64>>,
    at: Vec<Option<i64>>,
}

fn fleet_json(m: &Model, judged_by: &HashMap<String, String>) -> Vec<u8> {
    let n = m.sensors.len();
    let mut f = Fleet {
        count: n,
        kinds: Vec::new(),
        judged_by: BTreeMap::new(),
        id: Vec::with_capacity(n),
        name: Vec::with_capacity(n),
        kind: Vec::with_capacity(n),
        lon: Vec::with_capacity(n),
        lat: Vec::with_capacity(n),
        seen: Vec::with_capacity(n),
        value: Vec::with_capacity(n),
        at: Vec::with_capacity(n),
    };
    let mut kind_ix: HashMap<&str, usize> = HashMap::new();
    for (id, e) in &m.sensors {
        let ix = *kind_ix.entry(&e.kind).or_insert_with(|| {
            f.kinds.push(&e.kind);
            if let Some(metric) = judged_by.get(&*e.kind) {
                f.judged_by.insert(&e.kind, metric);
            }
            f.kinds.len() - 1
        });
        let place = e.lon.zip(e.lat);
        f.id.push(id);
        f.name.push(e.name.as_deref());
        f.kind.push(ix);
        f.lon.push(place.map(|p| p.0));
        f.lat.push(place.map(|p| p.1));
        f.seen.push(e.seen_ms);
        f.value.push(e.judged.map(|j| j.0));
        f.at.push(e.judged.map(|j| j.1));
    }
    // Plain strings, numbers and maps with string keys: serializing cannot fail.
    serde_json::to_vec(&f).unwrap_or_default()
}
