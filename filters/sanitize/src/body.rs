//! JSON body rules. The body is parsed once; the upstream receives the
//! re-serialised object the rules were checked against (so a parser
//! differential between the gateway and the service has nothing to work
//! with), with unknown fields stripped when the rule says so.

use std::borrow::Cow;
use std::fmt;

use filter_core::Denial;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::{FieldRule, JsonBodyRule, UnknownFields};

fn invalid(msg: impl Into<Cow<'static, str>>) -> Denial {
    Denial::bad_request("invalid_body", msg)
}

/// Top-level object with duplicate names detected (serde_json keeps the last
/// silently; services may keep the first).
struct TopLevel(Vec<(String, Value)>);

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut out: Vec<(String, Value)> = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            let v: Value = map.next_value()?;
            out.push((k, v));
        }
        if let Some(k) = duplicate_name(&out) {
            return Err(serde::de::Error::custom(format!("duplicate field `{k}`")));
        }
        Ok(TopLevel(out))
    }
}

/// A name that occurs more than once (the smallest such), in O(n log n): a
/// 64 KiB body can hold ~8,000 names, and comparing each with every earlier
/// one cost ~60 ms of CPU (natively) per request, before any token was checked.
fn duplicate_name(fields: &[(String, Value)]) -> Option<&str> {
    let mut names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    names.windows(2).find_map(|w| match w {
        [a, b] if a == b => Some(*a),
        _ => None,
    })
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_field(name: &str, rule: &FieldRule, v: &Value) -> Result<(), Denial> {
    let fail = |what: String| Err(invalid(format!("field `{name}`: {what}")));
    match rule {
        FieldRule::String {
            min_length,
            max_length,
            ..
        } => {
            let Value::String(s) = v else {
                return fail("must be a string".into());
            };
            let n = s.chars().count();
            if let Some(max) = max_length {
                if n > *max {
                    return fail(format!("must be at most {max} characters"));
                }
            }
            if let Some(min) = min_length {
                if n < *min {
                    return fail(format!("must be at least {min} characters"));
                }
            }
        }
        FieldRule::Integer { min, max, .. } => {
            let Some(i) = v.as_i64().filter(|_| v.is_i64() || v.is_u64()) else {
                return fail(integer_range_text(*min, *max));
            };
            if min.is_some_and(|m| i < m) || max.is_some_and(|m| i > m) {
                return fail(integer_range_text(*min, *max));
            }
        }
        FieldRule::Number { min, max, .. } => {
            let Some(x) = v.as_f64() else {
                return fail("must be a number".into());
            };
            if min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m) {
                return fail("is out of range".into());
            }
        }
        FieldRule::Boolean { .. } => {
            if !v.is_boolean() {
                return fail("must be true or false".into());
            }
        }
    }
    Ok(())
}

fn integer_range_text(min: Option<i64>, max: Option<i64>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("must be an integer between {a} and {b}"),
        (Some(a), None) => format!("must be an integer of at least {a}"),
        (None, Some(b)) => format!("must be an integer of at most {b}"),
        (None, None) => "must be an integer".into(),
    }
}

/// Checks `body` against `rule`. Returns the body to forward when it differs
/// from what arrived (`None`: forward it unchanged).
pub fn check(body: &[u8], rule: &JsonBodyRule) -> Result<Option<Vec<u8>>, Denial> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("a JSON object body is required"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let TopLevel(fields) = match de
        .deserialize_map(TopLevelVisitor)
        .and_then(|t| de.end().map(|()| t))
    {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            return Err(if msg.starts_with("duplicate field") {
                invalid(
                    msg.split(" at line")
                        .next()
                        .unwrap_or("duplicate field")
                        .to_string(),
                )
            } else if e.is_data() {
                invalid("the body must be a JSON object")
            } else if msg.starts_with("recursion limit exceeded") {
                // serde_json's own bound (128 levels) met before ours.
                invalid("the body is nested too deeply")
            } else {
                invalid("the body is not valid JSON")
            });
        }
    };
    let mut out = Map::with_capacity(fields.len());
    for (name, value) in fields {
        if depth(&value) + 1 > rule.max_depth {
            return Err(invalid(format!("field `{name}`: nested too deeply")));
        }
        match rule.fields.get(&name) {
            Some(r) => {
                check_field(&name, r, &value)?;
                out.insert(name, value);
            }
            None => match rule.unknown_fields {
                UnknownFields::Strip => {}
                UnknownFields::Keep => {
                    out.insert(name, value);
                }
                UnknownFields::Reject => {
                    return Err(invalid(format!("field `{name}`: unknown field")))
                }
            },
        }
    }
    for (name, r) in &rule.fields {
        if r.required() && !out.contains_key(name) {
            return Err(invalid(format!("field `{name}`: is required")));
        }
    }
    let rendered = serde_json::to_vec(&Value::Object(out))
        .map_err(|_| invalid("the body could not be re-encoded"))?;
    Ok(if rendered == body {
        None
    } else {
        Some(rendered)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn orders() -> JsonBodyRule {
        let mut fields = BTreeMap::new();
        fields.insert(
            "item_id".into(),
            FieldRule::String {
                required: true,
                min_length: None,
                max_length: Some(64),
            },
        );
        fields.insert(
            "quantity".into(),
            FieldRule::Integer {
                required: true,
                min: Some(1),
                max: Some(100),
            },
        );
        JsonBodyRule {
            fields,
            unknown_fields: UnknownFields::Strip,
            max_depth: 32,
        }
    }

    fn msg(body: &str) -> String {
        check(body.as_bytes(), &orders())
            .unwrap_err()
            .message
            .into_owned()
    }

    #[test]
    fn valid_compact_body_passes_unchanged() {
        assert_eq!(
            check(br#"{"item_id":"a1","quantity":3}"#, &orders()).unwrap(),
            None
        );
    }

    #[test]
    fn unknown_fields_are_stripped_and_order_kept() {
        let out = check(
            br#"{"quantity":3, "admin":true, "item_id":"a1"}"#,
            &orders(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(out, br#"{"quantity":3,"item_id":"a1"}"#);
    }

    #[test]
    fn each_invalid_field_is_named() {
        assert!(msg(r#"{"item_id":"a1"}"#).contains("`quantity`: is required"));
        assert!(msg(r#"{"item_id":"a1","quantity":0}"#).contains("`quantity`"));
        assert!(msg(r#"{"item_id":"a1","quantity":101}"#).contains("between 1 and 100"));
        assert!(msg(r#"{"item_id":"a1","quantity":"3"}"#).contains("`quantity`"));
        assert!(msg(r#"{"item_id":"a1","quantity":2.5}"#).contains("`quantity`"));
        assert!(msg(r#"{"item_id":5,"quantity":1}"#).contains("`item_id`: must be a string"));
        let long = format!(r#"{{"item_id":"{}","quantity":1}}"#, "x".repeat(65));
        assert!(msg(&long).contains("at most 64"));
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let s = format!(r#"{{"item_id":"{}","quantity":1}}"#, "é".repeat(64));
        assert!(check(s.as_bytes(), &orders()).is_ok());
    }

    #[test]
    fn malformed_duplicate_and_non_object_bodies_are_refused() {
        assert!(msg("{").contains("not valid JSON"));
        assert!(msg("[1,2]").contains("JSON object"));
        assert!(msg("").contains("required"));
        assert!(msg(r#"{"item_id":"a","quantity":1} trailing"#).contains("not valid JSON"));
        assert!(msg(r#"{"item_id":"a","quantity":1,"quantity":1000}"#)
            .contains("duplicate field `quantity`"));
    }

    #[test]
    fn many_names_are_checked_for_duplicates_in_n_log_n() {
        // ~64 KiB of distinct names: linear scans made this ~60 ms natively.
        let names: Vec<String> = (0..7000).map(|i| format!(r#""k{i}":0"#)).collect();
        let body = format!(r#"{{"item_id":"a","quantity":1,{}}}"#, names.join(","));
        let started = std::time::Instant::now();
        assert!(check(body.as_bytes(), &orders()).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        let dup = format!(
            r#"{{"item_id":"a","quantity":1,{},"k6999":1}}"#,
            names.join(",")
        );
        assert!(msg(&dup).contains("duplicate field `k6999`"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!(
            r#"{{"item_id":"a","quantity":1,"x":{}{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(msg(&deep).contains("nested too deeply"));
        let deeper = format!(
            r#"{{"item_id":"a","quantity":1,"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(msg(&deeper), "the body is nested too deeply");
    }
}
