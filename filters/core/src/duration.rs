//! Durations written in config as strings: `"250ms"`, `"5s"`, `"2m"`, `"1h"`.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration parsed from `<integer><unit>`, unit one of
/// `ms`, `s`, `m`, `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigDuration(pub Duration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected an integer followed by ms, s, m or h (e.g. \"5s\")")]
pub struct DurationError(pub String);

impl ConfigDuration {
    pub fn parse(s: &str) -> Result<Self, DurationError> {
        let err = || DurationError(s.to_string());
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (num, unit) = s.split_at(split);
        if num.is_empty() || num.len() > 12 {
            return Err(err());
        }
        let n: u64 = num.parse().map_err(|_| err())?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            _ => return Err(err()),
        };
        Ok(ConfigDuration(d))
    }
    pub fn from_secs(s: u64) -> Self {
        ConfigDuration(Duration::from_secs(s))
    }
    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ConfigDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for ConfigDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]{1,12}(ms|s|m|h)$",
            "description": "A duration: an integer followed by ms, s, m or h, e.g. \"5s\"."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(
            ConfigDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            ConfigDuration::parse("5s").unwrap().0,
            Duration::from_secs(5)
        );
        assert_eq!(
            ConfigDuration::parse("2m").unwrap().0,
            Duration::from_secs(120)
        );
        assert_eq!(
            ConfigDuration::parse("1h").unwrap().0,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn rejects_missing_unit_sign_fraction_and_overflow() {
        for bad in [
            "",
            "5",
            "s",
            "-5s",
            "1.5s",
            "5 s",
            "5sec",
            "999999999999999h",
        ] {
            assert!(ConfigDuration::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["5s", "250ms", "0s"] {
            assert_eq!(ConfigDuration::parse(s).unwrap().to_string(), s);
        }
    }
}
