//! The mandate's indicators (`[indicators]`): what each measures, its unit and
//! method, the plan line it serves and its UN SDG targets, and the limit the
//! law or the plan sets where there is one. The store computes them from the
//! readings; the API, the catalogue and the web view describe them from here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// How indicators cut time and read the readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IndicatorSettings {
    /// The city's time zone (IANA name): days, nights, months and years are local.
    pub timezone: String,
    /// A fill level falling by at least this many points between two readings is a collection.
    pub collection_drop: f64,
    /// A collection at or above this fill level (%) was made full (emptying efficiency).
    pub full_at: f64,
    /// An hour whose mean fill level is at or above this (%) is at risk of overflowing.
    pub overflow_at: f64,
    /// A day's mean is valid with at least this share of its hours (Directive 2008/50/EC: 75 %).
    pub min_day_coverage: f64,
    /// Seconds an answer over finished days is kept and served again without computing
    /// it (late readings for those days show after this). 0: compute every request.
    pub cache_s: u64,
    /// Keep each sensor's indicator values per settled day (older than about four
    /// days) in the database, maintained as late readings arrive, so a year is read
    /// rather than computed from the readings. Off: every request computes from the
    /// readings.
    pub materialize: bool,
}

impl Default for IndicatorSettings {
    fn default() -> Self {
        Self {
            timezone: "Europe/Rome".into(),
            collection_drop: 20.0,
            full_at: 80.0,
            overflow_at: 95.0,
            min_day_coverage: 0.75,
            cache_s: 600,
            materialize: true,
        }
    }
}

impl IndicatorSettings {
    pub fn tz(&self) -> Result<chrono_tz::Tz, String> {
        chrono_tz::Tz::from_str(&self.timezone).map_err(|_| {
            format!(
                "indicators.timezone {:?} is not an IANA time zone",
                self.timezone
            )
        })
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.tz()?;
        let percent = |v: f64| (0.0..=100.0).contains(&v);
        let valid = percent(self.collection_drop)
            && self.collection_drop > 0.0
            && percent(self.full_at)
            && percent(self.overflow_at)
            && self.min_day_coverage > 0.0
            && self.min_day_coverage <= 1.0;
        if !valid {
            return Err("indicators: collection_drop in 0-100, full_at and overflow_at in 0-100, min_day_coverage in 0-1".into());
        }
        Ok(())
    }

    /// Hours a day needs for its mean to count.
    pub fn min_day_hours(&self) -> i64 {
        (24.0 * self.min_day_coverage).ceil() as i64
    }
}

/// The periods rows are cut into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
    Year,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            "year" => Some(Self::Year),
            _ => None,
        }
    }
}

/// How one indicator is computed; the store has one query per method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Daily mean of hourly means, valid with enough hours (`metric`).
    DailyMean,
    /// Valid days whose mean is above the limit, per period.
    ExceedanceDays,
    /// Mean of the hourly means over the period.
    PeriodMean,
    /// Fill-level drops: how many.
    Collections,
    /// Fill-level drops: mean fill just before.
    FillAtCollection,
    /// Fill-level drops: share made at or above `full_at`.
    FullShare,
    /// Hours with a mean fill at or above `overflow_at`.
    OverflowHours,
    /// Energy from the cumulative meter, night by night (noon to noon).
    EnergyPerNight,
    /// Hours drawing more than the kind's `lit_above`, night by night.
    LitHours,
    /// Hours lit by day or dark at night (civil twilight excluded).
    FaultHours,
    /// Bicycles both ways per day.
    Trips,
}

impl Method {
    /// Decimals the values are rounded to: means and shares to 3 (a thousandth of
    /// µg/m³ or of a percent is below any sensor's resolution), energy and hours to
    /// 4 (a night's fraction of an hour), counts are whole.
    pub fn decimals(self) -> u32 {
        match self {
            Self::DailyMean | Self::PeriodMean | Self::FillAtCollection | Self::FullShare => 3,
            Self::EnergyPerNight | Self::LitHours | Self::FaultHours => 4,
            Self::ExceedanceDays | Self::Collections | Self::OverflowHours | Self::Trips => 0,
        }
    }
}

/// One indicator's description.
#[derive(Debug, Clone, Serialize)]
pub struct Indicator {
    pub id: &'static str,
    pub kind: &'static str,
    /// The metric(s) it reads.
    pub metrics: &'static [&'static str],
    pub title: &'static str,
    pub title_it: &'static str,
    pub unit: &'static str,
    /// How it is computed, for a reader of the data.
    pub method: &'static str,
    pub method_it: &'static str,
    /// The line of Cremona's mandate plans it measures.
    pub plan: &'static str,
    pub plan_it: &'static str,
    /// UN Sustainable Development Goal targets.
    pub sdg: &'static [&'static str],
    /// EU data-theme code (DCAT-AP).
    pub theme: &'static str,
    /// The limit or target for one sensor and period, when the law or plan sets one.
    pub target: Option<Target>,
    /// The period a client gets without asking.
    pub default_period: Period,
    #[serde(skip)]
    pub compute: Method,
}

/// A limit drawn on the chart.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    pub value: f64,
    /// Which way is good: `below` (a limit) or `above` (a goal).
    pub good: &'static str,
    /// Where it comes from.
    pub source: &'static str,
    /// The value that applies from 2030, where one is already set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_2030: Option<f64>,
    /// For a count of days: only at the period of a year.
    pub period: Period,
}

const AIR_PLAN: &str = "Environment: cleaner air";
const AIR_PLAN_IT: &str = "Ambiente: qualità dell'aria";
const WASTE_PLAN: &str = "Circular economy: waste collection";
const WASTE_PLAN_IT: &str = "Economia circolare: raccolta dei rifiuti";
const LIGHT_PLAN: &str = "Energy: efficient public lighting";
const LIGHT_PLAN_IT: &str = "Energia: illuminazione pubblica efficiente";
const BIKE_PLAN: &str = "Sustainable mobility (PUMS): cycling";
const BIKE_PLAN_IT: &str = "Mobilità sostenibile (PUMS): ciclabilità";
const AIR_SOURCE: &str =
    "Directive 2008/50/EC, Annex XI; from 2030 Directive (EU) 2024/2881, Annex I";

/// Every indicator the hub computes; those whose kind is not configured are left out.
pub const INDICATORS: &[Indicator] = &[
    Indicator {
        id: "pm10_daily_mean",
        kind: "air_quality",
        metrics: &["pm10"],
        title: "PM10 daily mean",
        title_it: "PM10, media giornaliera",
        unit: "µg/m³",
        method: "Mean of the hourly means of each local calendar day; a day counts with at least 75 % of its hours (18 of 24). Month and year: mean of the valid days. City: mean of the stations' valid daily means.",
        method_it: "Media delle medie orarie di ogni giorno (ora locale); un giorno vale con almeno il 75 % delle ore (18 su 24). Mese e anno: media dei giorni validi. Città: media delle stazioni.",
        plan: AIR_PLAN,
        plan_it: AIR_PLAN_IT,
        sdg: &["3.9", "11.6"],
        theme: "ENVI",
        target: Some(Target { value: 50.0, good: "below", source: AIR_SOURCE, value_2030: Some(45.0), period: Period::Day }),
        default_period: Period::Day,
        compute: Method::DailyMean,
    },
    Indicator {
        id: "pm10_exceedance_days",
        kind: "air_quality",
        metrics: &["pm10"],
        title: "Days above the PM10 daily limit",
        title_it: "Giorni di superamento del limite giornaliero di PM10",
        unit: "days",
        method: "Valid days (see pm10_daily_mean) whose mean is above 50 µg/m³, per period; `exceedances_2030` counts those above 45 µg/m³. The limit allows 35 such days a calendar year (18 from 2030). City: days on which any station was above.",
        method_it: "Giorni validi con media oltre 50 µg/m³; `exceedances_2030` conta quelli oltre 45 µg/m³. Il limite ammette 35 giorni per anno civile (18 dal 2030). Città: giorni con almeno una stazione oltre il limite.",
        plan: AIR_PLAN,
        plan_it: AIR_PLAN_IT,
        sdg: &["3.9", "11.6"],
        theme: "ENVI",
        target: Some(Target { value: 35.0, good: "below", source: AIR_SOURCE, value_2030: Some(18.0), period: Period::Year }),
        default_period: Period::Year,
        compute: Method::ExceedanceDays,
    },
    Indicator {
        id: "pm10_annual_mean",
        kind: "air_quality",
        metrics: &["pm10"],
        title: "PM10 mean",
        title_it: "PM10, media del periodo",
        unit: "µg/m³",
        method: "Mean of the hourly means in the period; `coverage` is the share of its hours with data (the annual limit needs 90 %). City: mean of the stations.",
        method_it: "Media delle medie orarie del periodo; `coverage` è la quota di ore con dati (il limite annuale ne richiede il 90 %). Città: media delle stazioni.",
        plan: AIR_PLAN,
        plan_it: AIR_PLAN_IT,
        sdg: &["3.9", "11.6"],
        theme: "ENVI",
        target: Some(Target { value: 40.0, good: "below", source: AIR_SOURCE, value_2030: Some(20.0), period: Period::Year }),
        default_period: Period::Year,
        compute: Method::PeriodMean,
    },
    Indicator {
        id: "pm2_5_annual_mean",
        kind: "air_quality",
        metrics: &["pm2_5"],
        title: "PM2.5 mean",
        title_it: "PM2,5, media del periodo",
        unit: "µg/m³",
        method: "Mean of the hourly means in the period, with its `coverage`. City: mean of the stations.",
        method_it: "Media delle medie orarie del periodo, con la sua `coverage`. Città: media delle stazioni.",
        plan: AIR_PLAN,
        plan_it: AIR_PLAN_IT,
        sdg: &["3.9", "11.6"],
        theme: "ENVI",
        target: Some(Target { value: 25.0, good: "below", source: AIR_SOURCE, value_2030: Some(10.0), period: Period::Year }),
        default_period: Period::Year,
        compute: Method::PeriodMean,
    },
    Indicator {
        id: "no2_annual_mean",
        kind: "air_quality",
        metrics: &["no2"],
        title: "NO2 mean",
        title_it: "NO2, media del periodo",
        unit: "µg/m³",
        method: "Mean of the hourly means in the period, with its `coverage`. City: mean of the stations.",
        method_it: "Media delle medie orarie del periodo, con la sua `coverage`. Città: media delle stazioni.",
        plan: AIR_PLAN,
        plan_it: AIR_PLAN_IT,
        sdg: &["3.9", "11.6"],
        theme: "ENVI",
        target: Some(Target { value: 40.0, good: "below", source: AIR_SOURCE, value_2030: Some(20.0), period: Period::Year }),
        default_period: Period::Year,
        compute: Method::PeriodMean,
    },
    Indicator {
        id: "bin_collections",
        kind: "waste_bin",
        metrics: &["fill_level"],
        title: "Bin collections",
        title_it: "Svuotamenti dei cassonetti",
        unit: "collections",
        method: "A collection is a fill level falling by at least indicators.collection_drop points (20) between two readings, dated by the reading after it. City: all bins; with by=stream, also each waste stream (the bin's `stream` property).",
        method_it: "Uno svuotamento è un calo del livello di almeno indicators.collection_drop punti (20) fra due letture, datato dalla lettura successiva. Città: tutti i cassonetti; con by=stream anche per flusso (proprietà `stream`).",
        plan: WASTE_PLAN,
        plan_it: WASTE_PLAN_IT,
        sdg: &["11.6", "12.5"],
        theme: "ENVI",
        target: None,
        default_period: Period::Day,
        compute: Method::Collections,
    },
    Indicator {
        id: "bin_fill_at_collection",
        kind: "waste_bin",
        metrics: &["fill_level"],
        title: "Fill level at collection",
        title_it: "Livello di riempimento allo svuotamento",
        unit: "%",
        method: "Mean of the fill level read just before each collection (see bin_collections) in the period.",
        method_it: "Media del livello letto subito prima di ogni svuotamento (vedi bin_collections) nel periodo.",
        plan: WASTE_PLAN,
        plan_it: WASTE_PLAN_IT,
        sdg: &["11.6", "12.5"],
        theme: "ENVI",
        target: None,
        default_period: Period::Month,
        compute: Method::FillAtCollection,
    },
    Indicator {
        id: "bin_collections_full_share",
        kind: "waste_bin",
        metrics: &["fill_level"],
        title: "Collections made full",
        title_it: "Svuotamenti a cassonetto pieno",
        unit: "%",
        method: "Share of the collections (see bin_collections) made at or above indicators.full_at (80 %) fill: emptying efficiency, higher is better.",
        method_it: "Quota degli svuotamenti fatti con il cassonetto pieno almeno a indicators.full_at (80 %): efficienza della raccolta, più alta è meglio.",
        plan: WASTE_PLAN,
        plan_it: WASTE_PLAN_IT,
        sdg: &["11.6", "12.5"],
        theme: "ENVI",
        target: None,
        default_period: Period::Month,
        compute: Method::FullShare,
    },
    Indicator {
        id: "bin_overflow_hours",
        kind: "waste_bin",
        metrics: &["fill_level"],
        title: "Hours at risk of overflowing",
        title_it: "Ore a rischio di traboccamento",
        unit: "h",
        method: "Hours whose mean fill level is at or above indicators.overflow_at (95 %).",
        method_it: "Ore con livello medio pari o superiore a indicators.overflow_at (95 %).",
        plan: WASTE_PLAN,
        plan_it: WASTE_PLAN_IT,
        sdg: &["11.6"],
        theme: "ENVI",
        target: None,
        default_period: Period::Day,
        compute: Method::OverflowHours,
    },
    Indicator {
        id: "lamp_energy_per_night",
        kind: "streetlight",
        metrics: &["energy"],
        title: "Street-lighting energy per night",
        title_it: "Energia dell'illuminazione per notte",
        unit: "kWh",
        method: "Increase of each lamp's cumulative meter from noon to noon (a night is dated by its evening); a meter that goes back counts as reset to zero. Month and year: sum of the nights. City: all lamps, with `lamps` and `per_lamp`.",
        method_it: "Incremento del contatore cumulativo di ogni punto luce da mezzogiorno a mezzogiorno (la notte prende la data della sera); un contatore che torna indietro vale come azzerato. Mese e anno: somma delle notti. Città: tutti i punti luce, con `lamps` e `per_lamp`.",
        plan: LIGHT_PLAN,
        plan_it: LIGHT_PLAN_IT,
        sdg: &["7.3", "11.6", "13.2"],
        theme: "ENER",
        target: None,
        default_period: Period::Day,
        compute: Method::EnergyPerNight,
    },
    Indicator {
        id: "lamp_lit_hours",
        kind: "streetlight",
        metrics: &["power"],
        title: "Lit hours per night",
        title_it: "Ore di accensione per notte",
        unit: "h",
        method: "Time from each reading drawing more than the kind's lit_above to the next reading (at most two cadences), noon to noon.",
        method_it: "Tempo da ogni lettura con potenza oltre lit_above alla successiva (al più due cadenze), da mezzogiorno a mezzogiorno.",
        plan: LIGHT_PLAN,
        plan_it: LIGHT_PLAN_IT,
        sdg: &["7.3"],
        theme: "ENER",
        target: None,
        default_period: Period::Day,
        compute: Method::LitHours,
    },
    Indicator {
        id: "lamp_fault_hours",
        kind: "streetlight",
        metrics: &["power"],
        title: "Lamp fault hours",
        title_it: "Ore di guasto dei punti luce",
        unit: "h",
        method: "Time from each reading to the next (at most two cadences) while the lamp is lit with the sun more than 6° up, or dark with it more than 6° down; civil twilight is never a fault. Local calendar days.",
        method_it: "Tempo da ogni lettura alla successiva (al più due cadenze) con il punto luce acceso e il sole oltre 6° sopra l'orizzonte, o spento e il sole oltre 6° sotto; il crepuscolo civile non è mai un guasto. Giorni di calendario locali.",
        plan: LIGHT_PLAN,
        plan_it: LIGHT_PLAN_IT,
        sdg: &["7.3", "11.6"],
        theme: "ENER",
        target: None,
        default_period: Period::Day,
        compute: Method::FaultHours,
    },
    Indicator {
        id: "bike_trips_per_day",
        kind: "bike_counter",
        metrics: &["count_in", "count_out"],
        title: "Bicycle trips",
        title_it: "Passaggi di biciclette",
        unit: "trips",
        method: "Bicycles counted both ways (count_in + count_out), dated by each interval's reading, per local day. Month and year: the sum, the weekday and weekend daily means, and `change_pct` against the period before.",
        method_it: "Biciclette contate nei due sensi (count_in + count_out) per giorno locale. Mese e anno: la somma, le medie giornaliere feriali e festive, e `change_pct` rispetto al periodo precedente.",
        plan: BIKE_PLAN,
        plan_it: BIKE_PLAN_IT,
        sdg: &["11.2", "3.4"],
        theme: "TRAN",
        target: None,
        default_period: Period::Day,
        compute: Method::Trips,
    },
];

/// The indicator named `id`.
pub fn find(id: &str) -> Option<&'static Indicator> {
    INDICATORS.iter().find(|i| i.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_timezone_parses() {
        let mut ids: Vec<_> = INDICATORS.iter().map(|i| i.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), INDICATORS.len());
        assert!(IndicatorSettings::default().tz().is_ok());
        let bad = IndicatorSettings {
            timezone: "Europe/Cremona".into(),
            ..Default::default()
        };
        assert!(bad.tz().is_err());
        assert_eq!(IndicatorSettings::default().min_day_hours(), 18);
    }
}
