//! Unit conversion for incoming values (SenML `u`/`bu`, adapter mappings) into
//! the unit a kind stores. Only linear conversions between units of one
//! dimension are defined; anything else is refused, never guessed.

/// A unit known to the hub: its dimension, and `value_in_base = v * factor + offset`.
struct UnitDef {
    names: &'static [&'static str],
    dimension: &'static str,
    factor: f64,
    offset: f64,
}

const UNITS: &[UnitDef] = &[
    UnitDef {
        names: &["%", "%RH", "%EL"],
        dimension: "percent",
        factor: 1.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["/"],
        dimension: "percent",
        factor: 100.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["°C", "Cel", "degC", "C"],
        dimension: "temperature",
        factor: 1.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["K"],
        dimension: "temperature",
        factor: 1.0,
        offset: -273.15,
    },
    UnitDef {
        names: &["°F", "degF", "F"],
        dimension: "temperature",
        factor: 5.0 / 9.0,
        offset: -32.0 * 5.0 / 9.0,
    },
    UnitDef {
        names: &["W"],
        dimension: "power",
        factor: 1.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["kW"],
        dimension: "power",
        factor: 1000.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["kWh"],
        dimension: "energy",
        factor: 1.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["Wh"],
        dimension: "energy",
        factor: 0.001,
        offset: 0.0,
    },
    UnitDef {
        names: &["MWh"],
        dimension: "energy",
        factor: 1000.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["J"],
        dimension: "energy",
        factor: 1.0 / 3.6e6,
        offset: 0.0,
    },
    UnitDef {
        names: &["µg/m³", "ug/m3", "µg/m3", "ug/m³"],
        dimension: "concentration",
        factor: 1.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["mg/m³", "mg/m3"],
        dimension: "concentration",
        factor: 1000.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["kg/m3"],
        dimension: "concentration",
        factor: 1e9,
        offset: 0.0,
    },
    UnitDef {
        names: &["mm"],
        dimension: "length",
        factor: 1.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["cm"],
        dimension: "length",
        factor: 10.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["m"],
        dimension: "length",
        factor: 1000.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["s"],
        dimension: "time",
        factor: 1.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["min"],
        dimension: "time",
        factor: 60.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["h"],
        dimension: "time",
        factor: 3600.0,
        offset: 0.0,
    },
    UnitDef {
        names: &["count", "1", "{count}"],
        dimension: "count",
        factor: 1.0,
        offset: 0.0,
    },
];

fn lookup(name: &str) -> Option<&'static UnitDef> {
    UNITS.iter().find(|u| u.names.contains(&name))
}

/// Why a value could not be expressed in the stored unit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error("unit {0:?} is not known")]
    Unknown(String),
    #[error("unit {from:?} cannot be converted to {to:?}")]
    Incompatible { from: String, to: String },
}

/// Converts `value` from unit `from` to unit `to`. Identical spellings always
/// pass, so a city can use a unit the table does not know for its own kinds.
pub fn convert(value: f64, from: &str, to: &str) -> Result<f64, UnitError> {
    if from == to {
        return Ok(value);
    }
    let f = lookup(from).ok_or_else(|| UnitError::Unknown(from.chars().take(32).collect()))?;
    let t = lookup(to).ok_or_else(|| UnitError::Incompatible {
        from: from.into(),
        to: to.into(),
    })?;
    if f.dimension != t.dimension {
        return Err(UnitError::Incompatible {
            from: from.into(),
            to: to.into(),
        });
    }
    let base = value * f.factor + f.offset;
    Ok((base - t.offset) / t.factor)
}

#[cfg(test)]
mod tests {
    use super::convert;

    #[test]
    fn conversions() {
        assert_eq!(convert(21.5, "Cel", "°C").unwrap(), 21.5);
        assert!((convert(294.65, "K", "°C").unwrap() - 21.5).abs() < 1e-9);
        assert!((convert(212.0, "°F", "°C").unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(convert(1500.0, "Wh", "kWh").unwrap(), 1.5);
        assert!((convert(3.6e6, "J", "kWh").unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(convert(0.725, "/", "%").unwrap(), 72.5);
        assert_eq!(convert(0.02, "mg/m3", "µg/m³").unwrap(), 20.0);
        assert_eq!(convert(42.0, "%RH", "%").unwrap(), 42.0);
        assert_eq!(convert(7.0, "lux", "lux").unwrap(), 7.0);
        assert!(convert(1.0, "W", "°C").is_err());
        assert!(convert(1.0, "furlong", "mm").is_err());
    }
}

/// The UCUM code of a unit the catalogue uses (SensorThings' `unitOfMeasurement`
/// names its units in UCUM); None for one UCUM has no code for.
pub fn ucum(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "%" | "%RH" | "%EL" => "%",
        "°C" | "Cel" | "degC" => "Cel",
        "K" => "K",
        "°F" | "degF" => "[degF]",
        "W" => "W",
        "kW" => "kW",
        "kWh" => "kW.h",
        "Wh" => "W.h",
        "mm" => "mm",
        "cm" => "cm",
        "m" => "m",
        "s" => "s",
        "min" => "min",
        "h" => "h",
        "µg/m³" | "ug/m3" => "ug/m3",
        "mg/m³" | "mg/m3" => "mg/m3",
        "ppm" => "[ppm]",
        "ppb" => "[ppb]",
        "hPa" => "hPa",
        "Pa" => "Pa",
        "V" => "V",
        "A" => "A",
        "lx" => "lx",
        "dB" | "dBA" | "dB(A)" => "dB",
        "m/s" => "m/s",
        "km/h" => "km/h",
        "l" | "L" => "L",
        "m³" | "m3" => "m3",
        "count" => "{count}",
        _ => return None,
    })
}

#[cfg(test)]
mod ucum_tests {
    #[test]
    fn every_unit_of_the_built_in_kinds_has_a_ucum_code() {
        let catalog = crate::Settings::load(None).unwrap().catalog().unwrap();
        for k in catalog.iter() {
            for (m, d) in &k.metrics {
                assert!(super::ucum(&d.unit).is_some(), "{}.{m}: {}", k.name, d.unit);
            }
        }
    }
}
