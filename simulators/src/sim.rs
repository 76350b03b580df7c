//! The simulation: a fleet reporting in simulated time, encoded in the chosen
//! formats, with faults injected at configured rates, and an exact account of
//! what was sent and what the hub should store.

use crate::fleet::{self, FleetSpec, SimSensor};
use crate::formats::{encode, Format};
use chrono::{DateTime, Duration, Utc};
use cityhub_core::Catalog;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// Fault rates, each the probability that a report carries that fault.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultRates {
    pub malformed: f64,
    pub out_of_range: f64,
    pub unknown_kind: f64,
    pub duplicate: f64,
    pub out_of_order: f64,
    pub burst: f64,
}

impl FaultRates {
    /// `malformed=0.01,duplicate=0.02,...`
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut f = FaultRates::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("fault {part:?}: expected name=rate"))?;
            let v: f64 = v
                .parse()
                .map_err(|_| format!("fault {k}: rate {v:?} is not a number"))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("fault {k}: rate {v} is not within 0..1"));
            }
            match k {
                "malformed" => f.malformed = v,
                "out_of_range" | "out-of-range" => f.out_of_range = v,
                "unknown_kind" | "unknown-kind" => f.unknown_kind = v,
                "duplicate" | "duplicates" => f.duplicate = v,
                "out_of_order" | "out-of-order" => f.out_of_order = v,
                "burst" | "bursts" => f.burst = v,
                other => return Err(format!("unknown fault {other:?}")),
            }
        }
        Ok(f)
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub start: DateTime<Utc>,
    pub fleet: FleetSpec,
    /// Formats assigned to sensors in turn (a sensor always speaks one format).
    pub formats: Vec<Format>,
    pub faults: FaultRates,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct SimMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub sensor: String,
    pub kind: String,
    pub format: Format,
    pub time: DateTime<Utc>,
    /// The values the hub should store from this message (empty for faulty ones).
    pub values: Vec<(String, f64)>,
    pub fault: Option<&'static str>,
    /// What the interval up to this report did (a collection, energy drawn);
    /// `None` on a sensor's first report, which the hub has nothing to compare with.
    pub event: Option<crate::fleet::Event>,
}

/// The account of a run: what was sent, faults injected, what the hub should hold.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub seed: u64,
    pub messages: u64,
    /// Messages the broker acknowledged (QoS 1): taken by the broker, which is not
    /// stored by the hub (see `stored_by_hub`).
    #[serde(rename = "acknowledged_by_broker")]
    pub acknowledged: u64,
    pub by_kind_and_format: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    /// Distinct valid readings (sensor, metric, time) the hub should store.
    pub expected_rows: u64,
    /// Dead letters the hub should write, by reason code.
    pub expected_dead_letters: BTreeMap<String, u64>,
    pub sensors: u64,
    pub first_time: Option<DateTime<Utc>>,
    pub last_time: Option<DateTime<Utc>>,
    pub elapsed_s: f64,
    pub rate_per_s: f64,
    /// What the hub stored, when the run was given its URL (`--hub`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_by_hub: Option<crate::hubcheck::HubCheck>,
    /// What the fleet did, per UTC hour; [`Report::indicators`] carries it by local day.
    #[serde(skip)]
    pub truth: crate::truth::Truth,
    /// The indicators' truth for the simulated period (see [`crate::truth`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indicators: Option<crate::truth::TruthSummary>,
}

impl Report {
    pub fn count(&mut self, m: &SimMessage) {
        self.messages += 1;
        *self
            .by_kind_and_format
            .entry(format!("{}/{}", m.kind, m.format.name()))
            .or_default() += 1;
        if let Some(f) = m.fault {
            *self.faults.entry(f.to_owned()).or_default() += 1;
            let dl = match f {
                "malformed" => Some("malformed_json"),
                "out_of_range" => Some("out_of_range"),
                "unknown_kind" => Some("unknown_kind"),
                _ => None,
            };
            if let Some(code) = dl {
                *self
                    .expected_dead_letters
                    .entry(code.to_owned())
                    .or_default() += 1;
            }
        }
        if m.fault != Some("duplicate") {
            self.expected_rows += m.values.len() as u64;
            self.account(m);
        }
        self.first_time = Some(self.first_time.map_or(m.time, |t| t.min(m.time)));
        self.last_time = Some(self.last_time.map_or(m.time, |t| t.max(m.time)));
    }
}

impl Report {
    /// Adds a message (not a duplicate) to the truth.
    fn account(&mut self, m: &SimMessage) {
        match m.event {
            Some(crate::fleet::Event::Collection { before, after }) => {
                self.truth.collections.push(crate::truth::Collection {
                    sensor: m.sensor.clone(),
                    reported_at: m.time,
                    fill_before: before,
                    fill_after: after,
                })
            }
            Some(crate::fleet::Event::Energy(kwh)) => self.truth.energy(&m.sensor, m.time, kwh),
            None => {}
        }
        match m.kind.as_str() {
            "air_quality" => {
                for (k, v) in &m.values {
                    if k == "pm10" {
                        self.truth.pm10(&m.sensor, m.time, *v);
                    }
                }
            }
            "bike_counter" => {
                let n: f64 = m
                    .values
                    .iter()
                    .filter(|(k, _)| k == "count_in" || k == "count_out")
                    .map(|(_, v)| v)
                    .sum();
                self.truth.trips(&m.sensor, m.time, n);
            }
            _ => {}
        }
    }
}

/// Generates the fleet's messages in simulated-time order.
pub struct Simulation {
    seed: u64,
    sensors: Vec<SimSensor>,
    formats: Vec<Format>,
    faults: FaultRates,
    /// (next report time, sensor index), earliest first.
    queue: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
    last: Vec<DateTime<Utc>>,
    sent_once: Vec<bool>,
    fcnt: Vec<u32>,
    rng: SmallRng,
    /// Messages held back (out of order) with how many messages later to release them.
    held: VecDeque<(u32, SimMessage)>,
    /// Per sensor: reports held back for a burst, and how many more to hold.
    burst: Vec<(Vec<SimMessage>, u32)>,
    ready: VecDeque<SimMessage>,
}

impl Simulation {
    pub fn new(opts: &SimOptions, catalog: &Catalog) -> Result<Self, String> {
        let sensors = fleet::build(opts.seed, &opts.fleet, catalog)?;
        if opts.formats.is_empty() {
            return Err("at least one format is needed".into());
        }
        // Whole seconds: every format carries at least millisecond precision.
        let start = DateTime::from_timestamp(opts.start.timestamp(), 0).unwrap_or(opts.start);
        let mut queue = BinaryHeap::new();
        for (i, s) in sensors.iter().enumerate() {
            let first = if s.cadence == Duration::minutes(15) && s.phase.is_zero() {
                // Interval counters report at quarter hours.
                let secs = start.timestamp();
                DateTime::from_timestamp(secs - secs.rem_euclid(900) + 900, 0).unwrap_or(start)
            } else {
                start + s.phase
            };
            queue.push(Reverse((first, i)));
        }
        let n = sensors.len();
        Ok(Self {
            seed: opts.seed,
            last: vec![start; n],
            sent_once: vec![false; n],
            fcnt: vec![0; n],
            burst: vec![(Vec::new(), 0); n],
            formats: opts.formats.clone(),
            faults: opts.faults.clone(),
            queue,
            rng: SmallRng::seed_from_u64(opts.seed ^ 0x5eed_5eed),
            held: VecDeque::new(),
            ready: VecDeque::new(),
            sensors,
        })
    }

    pub fn sensors(&self) -> &[SimSensor] {
        &self.sensors
    }

    /// The simulated time of the next report.
    pub fn peek_time(&self) -> Option<DateTime<Utc>> {
        self.ready
            .front()
            .map(|m| m.time)
            .or_else(|| self.queue.peek().map(|Reverse((t, _))| *t))
    }

    fn format_of(&self, i: usize) -> Format {
        let kind = &self.sensors[i].kind;
        let usable: Vec<Format> = self
            .formats
            .iter()
            .copied()
            .filter(|f| f.carries(kind))
            .collect();
        if usable.is_empty() {
            Format::Native
        } else {
            usable[i % usable.len()]
        }
    }

    /// The next message, or `None` when nothing is due at or before `until`.
    pub fn next_until(&mut self, until: DateTime<Utc>) -> Option<SimMessage> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Some(self.release_held(m));
            }
            let Reverse((t, i)) = *self.queue.peek()?;
            if t > until {
                return None;
            }
            self.queue.pop();
            let s = &self.sensors[i];
            self.queue.push(Reverse((t + s.cadence, i)));
            let m = self.report(i, t);
            self.place(i, m);
        }
    }

    /// Out-of-order messages go out after a few later ones.
    fn release_held(&mut self, m: SimMessage) -> SimMessage {
        for h in self.held.iter_mut() {
            h.0 = h.0.saturating_sub(1);
        }
        if let Some(pos) = self.held.iter().position(|h| h.0 == 0) {
            let (_, old) = self.held.remove(pos).expect("position is valid");
            self.ready.push_front(m);
            return old;
        }
        m
    }

    fn place(&mut self, i: usize, m: SimMessage) {
        let f = &self.faults;
        let (p_dup, p_ooo, p_burst) = (f.duplicate, f.out_of_order, f.burst);
        // A burst: the sensor goes quiet for a few reports, then sends them all at once.
        let (held, left) = &mut self.burst[i];
        if *left > 0 {
            held.push(m);
            *left -= 1;
            if *left == 0 {
                self.ready.extend(held.drain(..));
            }
            return;
        }
        if m.fault.is_none() && self.rng.gen_bool(p_burst) {
            let n = self.rng.gen_range(3..8);
            self.burst[i] = (vec![m], n);
            return;
        }
        if m.fault.is_none() && self.rng.gen_bool(p_ooo) {
            let mut m = m;
            m.fault = Some("out_of_order");
            let later = self.rng.gen_range(2..20);
            self.held.push_back((later, m));
            return;
        }
        let dup = m.fault.is_none() && self.rng.gen_bool(p_dup);
        if dup {
            let mut d = m.clone();
            d.fault = Some("duplicate");
            self.ready.push_back(m);
            self.ready.push_back(d);
        } else {
            self.ready.push_back(m);
        }
    }

    fn report(&mut self, i: usize, t: DateTime<Utc>) -> SimMessage {
        let prev = self.last[i];
        self.last[i] = t;
        let format = self.format_of(i);
        let mut values = self.sensors[i].report(prev, t, self.seed, &mut self.rng);
        self.fcnt[i] += 1;
        let event = if self.fcnt[i] > 1 {
            self.sensors[i].event
        } else {
            None
        };
        let with_location = !self.sent_once[i];
        let s = &self.sensors[i];
        let kind = s.kind.clone();
        let native_like = matches!(format, Format::Native | Format::Senml);
        let f = self.faults.clone();
        let fault = if self.rng.gen_bool(f.malformed) {
            Some("malformed")
        } else if native_like && self.rng.gen_bool(f.out_of_range) {
            Some("out_of_range")
        } else if native_like && self.rng.gen_bool(f.unknown_kind) {
            Some("unknown_kind")
        } else {
            None
        };
        let mut stored = values.clone();
        if fault == Some("out_of_range") {
            // Push the first metric well past its range; the others stay valid.
            let bad = 1e15;
            values[0].1 = bad;
            stored.remove(0);
        }
        let (mut topic, mut payload) = encode(format, s, t, &values, with_location, self.fcnt[i]);
        match fault {
            Some("malformed") => {
                payload.truncate(payload.len() / 2);
                payload.extend_from_slice(b"\x00garbage");
                stored.clear();
            }
            Some("unknown_kind") => {
                topic = topic.replacen(&format!("/{kind}/"), "/volcano/", 1);
                stored.clear();
            }
            _ => {}
        }
        if fault.is_none() || fault == Some("out_of_range") {
            self.sent_once[i] = true;
        }
        if format == Format::SensorCommunity {
            // The account lists what the format carries.
            stored.retain(|(k, _)| {
                ["pm10", "pm2_5", "temperature", "humidity"].contains(&k.as_str())
            });
        }
        if let (Format::Chirpstack, Some(depth)) = (format, s.depth_mm()) {
            // Ultrasonic bin sensors report distance; the hub derives the fill level from it.
            for (k, v) in stored.iter_mut() {
                if k == "fill_level" {
                    *k = "distance".into();
                    *v = crate::formats::distance_mm(depth, *v);
                }
            }
        }
        SimMessage {
            topic,
            payload,
            sensor: s.id.clone(),
            kind,
            format,
            time: t,
            values: stored,
            fault,
            event,
        }
    }

    /// Any messages still held back (out of order, bursts), for the end of a run.
    pub fn drain_held(&mut self) -> Vec<SimMessage> {
        let mut out: Vec<SimMessage> = self.ready.drain(..).collect();
        out.extend(self.held.drain(..).map(|(_, m)| m));
        for (held, left) in self.burst.iter_mut() {
            out.append(held);
            *left = 0;
        }
        out
    }
}
