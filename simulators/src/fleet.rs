//! A simulated Cremona fleet: sensors placed in the city's districts along
//! named streets, with stable ids and names for a given seed, and the
//! behaviour of each kind in simulated time.

use crate::sun;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc, Weekday};
use cityhub_core::Catalog;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::f64::consts::PI;

/// Cremona's extent (the city's built-up area): west, south, east, north.
pub const CREMONA: (f64, f64, f64, f64) = (9.99, 45.11, 10.07, 45.16);

/// (name, lat, lon, spread in degrees, activity factor: traffic and waste).
const DISTRICTS: &[(&str, f64, f64, f64, f64)] = &[
    ("Centro", 45.1335, 10.0245, 0.004, 1.5),
    ("Borgo Loreto", 45.1425, 10.0330, 0.004, 1.0),
    ("Zaist", 45.1470, 10.0120, 0.004, 0.9),
    ("Cambonino", 45.1460, 10.0470, 0.004, 0.9),
    ("San Felice", 45.1245, 10.0560, 0.004, 0.8),
    ("Lungo Po", 45.1230, 10.0140, 0.003, 0.7),
    ("Porta Po", 45.1280, 10.0300, 0.003, 1.1),
    ("Boschetto", 45.1520, 10.0600, 0.004, 0.7),
];

const STREETS: &[&str] = &[
    "Via Mazzini",
    "Corso Garibaldi",
    "Corso Campi",
    "Via Platina",
    "Via Dante",
    "Piazza del Comune",
    "Via Bergamo",
    "Via Castelleone",
    "Viale Po",
    "Via Brescia",
    "Via Giuseppina",
    "Via Milano",
    "Corso Matteotti",
    "Via Massarotti",
    "Via Eridano",
    "Via Mantova",
    "Via Persico",
    "Via Ghinaglia",
    "Via Cadore",
    "Via del Sale",
    "Via Palestro",
    "Corso Vittorio Emanuele II",
    "Via Solferino",
    "Via Aselli",
];

/// The waste streams of Cremona's separate collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Residual,
    Organic,
    Plastic,
    Paper,
    Glass,
}

impl Stream {
    const ALL: [Stream; 5] = [
        Stream::Residual,
        Stream::Organic,
        Stream::Plastic,
        Stream::Paper,
        Stream::Glass,
    ];
    fn label(self) -> &'static str {
        match self {
            Stream::Residual => "indifferenziato",
            Stream::Organic => "organico",
            Stream::Plastic => "plastica",
            Stream::Paper => "carta",
            Stream::Glass => "vetro",
        }
    }
    /// Fill rate in % per active hour, and days between collection rounds.
    fn rate_and_round(self) -> (f64, u32) {
        match self {
            Stream::Residual => (2.2, 2),
            Stream::Organic => (2.6, 2),
            Stream::Plastic => (1.4, 4),
            Stream::Paper => (1.1, 5),
            Stream::Glass => (0.5, 10),
        }
    }
}

/// Faults a share of lamps develop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LampFault {
    /// On by day as well.
    DayBurner,
    /// Dark at night.
    Dark,
    /// Power jumps around while on.
    Flicker,
}

/// The behaviour and state of one sensor.
#[derive(Debug, Clone)]
pub enum Model {
    Bin {
        stream: Stream,
        fill: f64,
        rate: f64,
        round_days: u32,
        round_minute: u32,
        battery: f64,
        depth_mm: f64,
    },
    Lamp {
        rated_w: f64,
        energy_kwh: f64,
        fault: Option<LampFault>,
    },
    Bike {
        base: f64,
    },
    Air {
        bias: f64,
    },
    /// A kind added by configuration: a bounded random walk inside each metric's range.
    Generic {
        metrics: Vec<(String, f64, f64)>,
        values: Vec<f64>,
    },
}

/// One simulated sensor.
#[derive(Debug, Clone)]
pub struct SimSensor {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub district: &'static str,
    pub lat: f64,
    pub lon: f64,
    pub cadence: Duration,
    /// Offset of its reports within the cadence, so sensors do not all report at once.
    pub phase: Duration,
    pub model: Model,
    /// Activity factor of its district.
    activity: f64,
    /// What the last report's interval did besides the values (for the truth).
    pub event: Option<Event>,
}

/// What happened in a reporting interval that the indicators measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// A collection round emptied the bin: the fill it last reported, and the new one.
    Collection { before: f64, after: f64 },
    /// The lamp drew this many kWh.
    Energy(f64),
}

/// The kinds the simulator has physics for (the built-in catalogue).
pub const BUILT_IN_KINDS: [&str; 4] = ["waste_bin", "streetlight", "bike_counter", "air_quality"];

/// What to build: sensors per kind, and the share of faulty lamps.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub per_kind: Vec<(String, usize)>,
    pub lamp_fault_share: f64,
}

impl FleetSpec {
    /// `n` sensors of each built-in kind.
    pub fn built_in(n: usize, lamp_fault_share: f64) -> Self {
        Self {
            per_kind: BUILT_IN_KINDS.iter().map(|k| (k.to_string(), n)).collect(),
            lamp_fault_share,
        }
    }
}

fn prefix(kind: &str) -> String {
    match kind {
        "waste_bin" => "bin".into(),
        "streetlight" => "lamp".into(),
        "bike_counter" => "bike".into(),
        "air_quality" => "aq".into(),
        other => other.replace('_', "-"),
    }
}

/// Builds the fleet; ids, names, places and parameters depend only on `seed` and `spec`.
pub fn build(seed: u64, spec: &FleetSpec, catalog: &Catalog) -> Result<Vec<SimSensor>, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (kind, n) in &spec.per_kind {
        let k = catalog
            .get(kind)
            .ok_or_else(|| format!("kind {kind:?} is not configured"))?;
        let cadence = Duration::seconds(i64::from(k.def.cadence_s.max(1)));
        for i in 0..*n {
            let (district, dlat, dlon, spread, activity) =
                DISTRICTS[rng.gen_range(0..DISTRICTS.len())];
            let lat = (dlat + rng.gen_range(-spread..spread)).clamp(CREMONA.1, CREMONA.3);
            let lon = (dlon + rng.gen_range(-spread..spread) * 1.4).clamp(CREMONA.0, CREMONA.2);
            let street = STREETS[rng.gen_range(0..STREETS.len())];
            let number = rng.gen_range(1..120);
            let id = format!("{}-{:04}", prefix(kind), i + 1);
            let (model, name, cadence) = match kind.as_str() {
                "waste_bin" => {
                    let stream = Stream::ALL[rng.gen_range(0..Stream::ALL.len())];
                    let (rate, round_days) = stream.rate_and_round();
                    let model = Model::Bin {
                        stream,
                        fill: rng.gen_range(0.0..60.0),
                        rate: rate * activity * rng.gen_range(0.7..1.3),
                        round_days,
                        round_minute: rng.gen_range(300..540), // rounds between 05:00 and 09:00 UTC
                        battery: rng.gen_range(55.0..100.0),
                        depth_mm: [1100.0, 1300.0, 1500.0][rng.gen_range(0..3)],
                    };
                    (
                        model,
                        format!(
                            "Cassonetto {} – {street} {number} ({district})",
                            stream.label()
                        ),
                        cadence,
                    )
                }
                "streetlight" => {
                    let fault = if rng.gen_bool(spec.lamp_fault_share.clamp(0.0, 1.0)) {
                        Some(
                            [LampFault::DayBurner, LampFault::Dark, LampFault::Flicker]
                                [rng.gen_range(0..3)],
                        )
                    } else {
                        None
                    };
                    let model = Model::Lamp {
                        rated_w: [36.0, 54.0, 72.0, 110.0, 150.0][rng.gen_range(0..5)],
                        energy_kwh: rng.gen_range(100.0..4000.0),
                        fault,
                    };
                    (
                        model,
                        format!("Lampione {street} {number} ({district})"),
                        cadence,
                    )
                }
                "bike_counter" => (
                    Model::Bike {
                        base: rng.gen_range(15.0..60.0) * activity,
                    },
                    format!("Contabici {street} ({district})"),
                    Duration::minutes(15),
                ),
                "air_quality" => (
                    Model::Air {
                        bias: rng.gen_range(0.85..1.2) * (0.8 + 0.2 * activity),
                    },
                    format!("Centralina aria {street} ({district})"),
                    cadence,
                ),
                _ => {
                    let metrics: Vec<(String, f64, f64)> = k
                        .metrics
                        .values()
                        .map(|m| {
                            (
                                m.name.to_string(),
                                m.min.unwrap_or(0.0),
                                m.max.unwrap_or(100.0),
                            )
                        })
                        .collect();
                    let values = metrics
                        .iter()
                        .map(|(_, lo, hi)| rng.gen_range(*lo..=*hi))
                        .collect();
                    (
                        Model::Generic { metrics, values },
                        format!("{} {street} ({district})", k.def.title),
                        cadence,
                    )
                }
            };
            let phase = if matches!(model, Model::Bike { .. }) {
                Duration::zero()
            } else {
                Duration::seconds(rng.gen_range(0..cadence.num_seconds().max(1)))
            };
            out.push(SimSensor {
                id,
                kind: kind.clone(),
                name,
                district,
                lat,
                lon,
                cadence,
                phase,
                model,
                activity,
                event: None,
            });
        }
    }
    Ok(out)
}

/// When and where a sensor reports, for its model's physics.
struct Moment<'a> {
    prev: DateTime<Utc>,
    t: DateTime<Utc>,
    /// Hours since the previous report.
    dt_h: f64,
    w: &'a Weather,
    lat: f64,
    lon: f64,
    activity: f64,
}

/// The day's weather, the same for the whole city and every run with one seed.
#[derive(Debug, Clone, Copy)]
pub struct Weather {
    pub rain: bool,
    /// Offset of the day's temperature from the seasonal mean (°C).
    pub temp_offset: f64,
    /// Winter stagnation: multiplies particulate; above 1.5 means an episode.
    pub stagnation: f64,
}

pub fn weather(seed: u64, date: NaiveDate) -> Weather {
    let day = i64::from(date.num_days_from_ce());
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ day as u64);
    let winter = matches!(date.month(), 11 | 12 | 1 | 2);
    let phase = (seed % 9) as f64;
    let wave = ((2.0 * PI * (day as f64 + phase) / 9.0).sin()).max(0.0);
    let rain = rng.gen_bool(if winter { 0.22 } else { 0.28 });
    Weather {
        rain,
        temp_offset: rng.gen_range(-3.0..3.0),
        stagnation: if winter && !rain {
            1.0 + 1.3 * wave * wave
        } else {
            1.0
        },
    }
}

/// Seasonal and daily temperature in Cremona (°C): about 2 °C in January, 24 °C in July.
fn temperature(t: DateTime<Utc>, w: &Weather) -> f64 {
    let doy = f64::from(t.ordinal());
    let hour = f64::from(t.hour()) + f64::from(t.minute()) / 60.0 + 1.0; // local solar-ish time
    13.0 - 11.0 * (2.0 * PI * (doy - 15.0) / 365.0).cos()
        + 5.0 * (2.0 * PI * (hour - 15.0) / 24.0).cos()
        + w.temp_offset
        - if w.rain { 2.0 } else { 0.0 }
}

/// Road traffic intensity 0..~1.3: weekday peaks around 08:00 and 18:00 local time.
fn traffic(t: DateTime<Utc>) -> f64 {
    let h = f64::from(t.hour()) + f64::from(t.minute()) / 60.0 + 1.0;
    let g = |mu: f64, s: f64| (-(h - mu).powi(2) / (2.0 * s * s)).exp();
    let weekend = matches!(t.weekday(), Weekday::Sat | Weekday::Sun);
    let day = if (6.0..22.0).contains(&h) { 0.35 } else { 0.05 };
    if weekend {
        day * 0.6 + 0.35 * g(11.5, 2.0) + 0.3 * g(17.0, 2.0)
    } else {
        day + g(8.0, 0.9) + 0.9 * g(18.0, 1.2)
    }
}

fn gaussian(rng: &mut SmallRng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

fn poisson(rng: &mut SmallRng, lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 0.0;
    }
    if lambda > 30.0 {
        return (lambda + lambda.sqrt() * gaussian(rng)).round().max(0.0);
    }
    let l = (-lambda).exp();
    let (mut k, mut p) = (0.0, 1.0);
    loop {
        p *= rng.gen_range(0.0..1.0);
        if p <= l {
            return k;
        }
        k += 1.0;
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl SimSensor {
    /// Advances the sensor from `prev` to `t` and returns the metrics it reports at `t`.
    pub fn report(
        &mut self,
        prev: DateTime<Utc>,
        t: DateTime<Utc>,
        seed: u64,
        rng: &mut SmallRng,
    ) -> Vec<(String, f64)> {
        let w = weather(seed, t.date_naive());
        let m = Moment {
            prev,
            t,
            dt_h: (t - prev).num_milliseconds().max(0) as f64 / 3_600_000.0,
            w: &w,
            lat: self.lat,
            lon: self.lon,
            activity: self.activity,
        };
        self.event = None;
        match &mut self.model {
            Model::Bin {
                fill,
                rate,
                round_days,
                round_minute,
                battery,
                ..
            } => {
                let (values, event) =
                    Self::bin(&m, rng, fill, *rate, *round_days, *round_minute, battery);
                self.event = event;
                values
            }
            Model::Lamp {
                rated_w,
                energy_kwh,
                fault,
            } => {
                let (values, event) = Self::lamp(&m, rng, *rated_w, energy_kwh, *fault);
                self.event = event;
                values
            }
            Model::Bike { base } => Self::bike(&m, rng, *base),
            Model::Air { bias } => Self::air(&m, rng, *bias),
            Model::Generic { metrics, values } => metrics
                .iter()
                .zip(values.iter_mut())
                .map(|((name, lo, hi), v)| {
                    let step = (*hi - *lo) * 0.02 * gaussian(rng);
                    *v = (*v + step).clamp(*lo, *hi);
                    (name.clone(), round2(*v).clamp(*lo, *hi))
                })
                .collect(),
        }
    }

    /// A bin fills with the street's traffic and is emptied on its collection rounds.
    #[allow(clippy::too_many_arguments)]
    fn bin(
        m: &Moment,
        rng: &mut SmallRng,
        fill: &mut f64,
        rate: f64,
        round_days: u32,
        round_minute: u32,
        battery: &mut f64,
    ) -> (Vec<(String, f64)>, Option<Event>) {
        let (prev, t, dt_h, w) = (m.prev, m.t, m.dt_h, m.w);
        let mut event = None;
        // Collection rounds: every `round_days` days at `round_minute` after midnight UTC.
        let mut collected = false;
        let mut day = prev.date_naive();
        while day <= t.date_naive() {
            if (day.num_days_from_ce() as u32).is_multiple_of(round_days) {
                let at = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
                    + Duration::minutes(i64::from(round_minute));
                if at > prev && at <= t {
                    collected = true;
                }
            }
            day = day.succ_opt().expect("date in range");
        }
        let busy = 0.4 + traffic(t);
        let before = round2(*fill);
        if collected {
            *fill = rng.gen_range(0.0..3.0);
        }
        *fill = (*fill + rate * busy * dt_h * rng.gen_range(0.6..1.4)).clamp(0.0, 100.0);
        if collected {
            event = Some(Event::Collection {
                before,
                after: round2(*fill),
            });
        }
        *battery = (*battery - 0.0015 * dt_h * 24.0 * rng.gen_range(0.5..1.5)).max(0.0);
        let values = vec![
            ("fill_level".into(), round2(*fill)),
            (
                "temperature".into(),
                round2(temperature(t, w) + 1.5 + gaussian(rng) * 0.3),
            ),
            ("battery".into(), round2(*battery)),
        ];
        (values, event)
    }

    /// A lamp is lit while it is dark (dimmed late at night), unless it is faulty.
    fn lamp(
        m: &Moment,
        rng: &mut SmallRng,
        rated_w: f64,
        energy_kwh: &mut f64,
        fault: Option<LampFault>,
    ) -> (Vec<(String, f64)>, Option<Event>) {
        let (t, dt_h, lat, lon) = (m.t, m.dt_h, m.lat, m.lon);
        let dark = sun::is_dark(t, lat, lon);
        let on = match fault {
            Some(LampFault::DayBurner) => true,
            Some(LampFault::Dark) => false,
            _ => dark,
        };
        let local_h = (t.hour() + 1) % 24;
        let dimming = if !on {
            0.0
        } else if (0..5).contains(&local_h) || local_h == 23 {
            50.0
        } else {
            100.0
        };
        let mut power = rated_w * dimming / 100.0;
        if on {
            power *= 1.0 + gaussian(rng) * 0.01;
            if fault == Some(LampFault::Flicker) {
                power = rated_w * rng.gen_range(0.0..1.0);
            }
        }
        let power = round2(power.max(0.0));
        *energy_kwh += power * dt_h / 1000.0;
        let event = Some(Event::Energy(power * dt_h / 1000.0));
        let values = vec![
            ("power".into(), power),
            ("energy".into(), (*energy_kwh * 1000.0).round() / 1000.0),
            ("dimming".into(), dimming),
        ];
        (values, event)
    }

    /// Bicycles pass with the traffic, fewer in rain and winter.
    fn bike(m: &Moment, rng: &mut SmallRng, base: f64) -> Vec<(String, f64)> {
        let (t, w) = (m.t, m.w);
        let mut lambda = base * traffic(t) * if w.rain { 0.45 } else { 1.0 };
        if matches!(t.month(), 12 | 1 | 2) {
            lambda *= 0.7;
        }
        let h = (t.hour() + 1) % 24;
        let (share_in, share_out) = if h < 13 { (0.65, 0.35) } else { (0.35, 0.65) };
        vec![
            ("count_in".into(), poisson(rng, lambda * share_in)),
            ("count_out".into(), poisson(rng, lambda * share_out)),
            ("interval_s".into(), 900.0),
        ]
    }

    /// Pollutants follow the season, the weather and the traffic.
    fn air(m: &Moment, rng: &mut SmallRng, bias: f64) -> Vec<(String, f64)> {
        let (t, w, lat, lon, activity) = (m.t, m.w, m.lat, m.lon, m.activity);
        let month = t.month();
        let season = match month {
            12 | 1 | 2 => 42.0,
            3 | 10 | 11 => 30.0,
            4 | 5 | 9 => 22.0,
            _ => 17.0,
        };
        let tr = traffic(t);
        let rain = if w.rain { 0.6 } else { 1.0 };
        let pm10 = (season
            * bias
            * w.stagnation
            * rain
            * (0.75 + 0.35 * tr)
            * (1.0 + 0.08 * gaussian(rng)))
        .max(2.0);
        let pm25 = pm10 * rng.gen_range(0.62..0.75);
        let no2 = ((18.0 + 38.0 * tr * activity)
            * if month <= 2 || month == 12 { 1.25 } else { 1.0 }
            + 4.0 * gaussian(rng))
        .max(1.0);
        let temp = temperature(t, w);
        let sunny = if sun::is_dark(t, lat, lon) { 0.0 } else { 1.0 };
        let o3 = (10.0 + sunny * (temp.max(0.0) * 3.2) - 0.25 * no2 + 5.0 * gaussian(rng)).max(1.0);
        let humidity = (95.0 - 2.2 * (temp - 2.0).max(0.0)
            + if w.rain { 10.0 } else { 0.0 }
            + 3.0 * gaussian(rng))
        .clamp(15.0, 100.0);
        vec![
            ("pm10".into(), round2(pm10)),
            ("pm2_5".into(), round2(pm25)),
            ("no2".into(), round2(no2)),
            ("o3".into(), round2(o3)),
            ("temperature".into(), round2(temp)),
            ("humidity".into(), round2(humidity)),
        ]
    }

    /// The bin's registered depth (for adapters that report distance).
    pub fn depth_mm(&self) -> Option<f64> {
        match self.model {
            Model::Bin { depth_mm, .. } => Some(depth_mm),
            _ => None,
        }
    }

    /// The bin's waste stream, as the registry's `stream` property names it.
    pub fn stream(&self) -> Option<&'static str> {
        match self.model {
            Model::Bin { stream, .. } => Some(stream.label()),
            _ => None,
        }
    }

    pub fn lamp_fault(&self) -> Option<LampFault> {
        match self.model {
            Model::Lamp { fault, .. } => fault,
            _ => None,
        }
    }
}
