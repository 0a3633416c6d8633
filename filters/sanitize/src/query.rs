//! Query string limits and per-parameter rules (integer clamps). Parameters
//! the rules do not name pass byte for byte; the query is rebuilt only when a
//! rule changed something.

use std::borrow::Cow;

use filter_core::Denial;
use percent_encoding::percent_decode_str;

use crate::config::{OnInvalid, QueryLimits, QueryParamRule};

fn invalid(msg: impl Into<Cow<'static, str>>) -> Denial {
    Denial::bad_request("invalid_query", msg)
}

fn well_formed(s: &str) -> bool {
    let b = s.as_bytes();
    // An escape of a byte >= 0x80: the decoded text must then be UTF-8
    // (`%c0%80` is an overlong NUL).
    let mut high = false;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = |j: usize| b.get(j).and_then(|&h| char::from(h).to_digit(16));
            // An encoded control character (`%0d%0a`, `%00`) is refused like a raw one.
            match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) if !(hi < 2 || (hi == 7 && lo == 0xf)) => high |= hi >= 8,
                _ => return false,
            }
            i += 3;
        } else if c < 0x20 || c == 0x7f {
            return false;
        } else {
            i += 1;
        }
    }
    !high || percent_decode_str(s).decode_utf8().is_ok()
}

/// Parses an integer and clamps it into `[min, max]`; a run of digits too
/// large for `i64` is still an integer, beyond the bound on its side.
fn clamped_integer(s: &str, min: i64, max: i64) -> Option<i64> {
    match s.parse::<i64>() {
        Ok(v) => Some(v.clamp(min, max)),
        Err(_) => {
            let (negative, digits) = match s.as_bytes().first() {
                Some(b'-') => (true, s.get(1..)?),
                Some(b'+') => (false, s.get(1..)?),
                _ => (false, s),
            };
            if digits.is_empty() || !digits.bytes().all(|d| d.is_ascii_digit()) {
                return None;
            }
            Some(if negative { min } else { max })
        }
    }
}

/// Decodes a query component (`+` is a space, as in forms).
fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let spaced = s.replace('+', " ");
    Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

/// Applies the limits and `rules` to `query`. Returns the rewritten query
/// when a rule changed it (`Some("")` means: drop the query), `None` when it
/// stays as it is.
pub fn apply(
    query: Option<&str>,
    limits: &QueryLimits,
    rules: &[(String, QueryParamRule)],
) -> Result<Option<String>, Denial> {
    let raw = query.unwrap_or("");
    // Split once; remember each pair's raw text and decoded name.
    let mut pairs: Vec<(&str, Cow<'_, str>, &str)> = Vec::new(); // (raw pair, decoded name, raw value)
    for piece in raw.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() == limits.max_params {
            return Err(invalid(format!(
                "more than {} query parameters",
                limits.max_params
            )));
        }
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        if name.len() > limits.max_name_length {
            return Err(invalid("a query parameter name is too long"));
        }
        if value.len() > limits.max_value_length {
            return Err(invalid("a query parameter value is too long"));
        }
        if !well_formed(name) || !well_formed(value) {
            return Err(invalid(
                "the query has an invalid percent-encoding, a control character or an encoding that is not UTF-8",
            ));
        }
        pairs.push((piece, decode(name), value));
    }
    if rules.is_empty() {
        return Ok(None);
    }
    let mut changed = false;
    // The parameters after the rules: (raw text, or a replacement).
    let mut out: Vec<Cow<'_, str>> = pairs.iter().map(|(p, _, _)| Cow::Borrowed(*p)).collect();
    let mut keep: Vec<bool> = vec![true; pairs.len()];
    for (name, rule) in rules {
        let QueryParamRule::IntegerClamp {
            min,
            max,
            default,
            on_invalid,
        } = rule;
        let hits: Vec<usize> = pairs
            .iter()
            .enumerate()
            .filter(|(_, (_, n, _))| n == name)
            .map(|(i, _)| i)
            .collect();
        let wanted: Option<i64> = match hits.first() {
            None => *default,
            Some(&first) => {
                let raw_value = pairs.get(first).map_or("", |p| p.2);
                match clamped_integer(decode(raw_value).trim(), *min, *max) {
                    Some(v) => Some(v),
                    None => match on_invalid {
                        OnInvalid::Reject => {
                            return Err(invalid(format!(
                                "query parameter `{name}` must be an integer"
                            )))
                        }
                        OnInvalid::Default => *default,
                    },
                }
            }
        };
        let rendered = wanted.map(|v| format!("{name}={v}"));
        match hits.first() {
            None => {
                if let Some(r) = rendered {
                    out.push(Cow::Owned(r));
                    keep.push(true);
                    changed = true;
                }
            }
            Some(&first) => {
                for &extra in hits.iter().skip(1) {
                    if let Some(k) = keep.get_mut(extra) {
                        *k = false;
                    }
                    changed = true;
                }
                match rendered {
                    Some(r) => {
                        if let Some(slot) = out.get_mut(first) {
                            if slot.as_ref() != r {
                                *slot = Cow::Owned(r);
                                changed = true;
                            }
                        }
                    }
                    None => {
                        if let Some(k) = keep.get_mut(first) {
                            *k = false;
                        }
                        changed = true;
                    }
                }
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    let rebuilt: Vec<&str> = out
        .iter()
        .zip(keep.iter().chain(std::iter::repeat(&true)))
        .filter(|(_, k)| **k)
        .map(|(p, _)| p.as_ref())
        .collect();
    Ok(Some(rebuilt.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_rule(on_invalid: OnInvalid) -> Vec<(String, QueryParamRule)> {
        vec![(
            "size".into(),
            QueryParamRule::IntegerClamp {
                min: 1,
                max: 100,
                default: Some(20),
                on_invalid,
            },
        )]
    }

    fn run(q: Option<&str>) -> Option<String> {
        apply(q, &QueryLimits::default(), &size_rule(OnInvalid::Default)).unwrap()
    }

    #[test]
    fn size_is_clamped_defaulted_and_left_alone_when_in_range() {
        assert_eq!(run(None).as_deref(), Some("size=20"));
        assert_eq!(run(Some("size=0")).as_deref(), Some("size=1"));
        assert_eq!(run(Some("size=1000")).as_deref(), Some("size=100"));
        assert_eq!(run(Some("size=50")), None);
        assert_eq!(run(Some("page=2")).as_deref(), Some("page=2&size=20"));
        assert_eq!(
            run(Some("a=1&size=-5&b=%41")).as_deref(),
            Some("a=1&size=1&b=%41")
        );
    }

    #[test]
    fn integers_beyond_i64_are_clamped_not_defaulted() {
        assert_eq!(
            run(Some("size=99999999999999999999999")).as_deref(),
            Some("size=100")
        );
        assert_eq!(
            run(Some("size=-99999999999999999999999")).as_deref(),
            Some("size=1")
        );
        assert_eq!(
            run(Some("size=%2B99999999999999999999")).as_deref(),
            Some("size=100")
        );
        // Not an integer at all: the default, as before.
        assert_eq!(run(Some("size=9e99")).as_deref(), Some("size=20"));
        assert_eq!(run(Some("size=-")).as_deref(), Some("size=20"));
        assert_eq!(run(Some("size=1-2")).as_deref(), Some("size=20"));
    }

    #[test]
    fn encoded_control_characters_are_refused_like_raw_ones() {
        let limits = QueryLimits::default();
        for q in [
            "a=%0d%0a", "a=%00", "a=%7F", "a=%1f", "%0a=1", "a=x%09y", "a=%80", "a=%c0%80", "%ff=1",
        ] {
            let e = apply(Some(q), &limits, &[]).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_query"), "{q}");
        }
        for q in ["a=%20", "a=%7e", "a=%C3%A9", "a=%2F", "a=%E2%82%AC"] {
            assert_eq!(apply(Some(q), &limits, &[]), Ok(None), "{q}");
        }
    }

    #[test]
    fn repeated_parameter_collapses_to_the_first_clamped() {
        assert_eq!(run(Some("size=5&size=500")).as_deref(), Some("size=5"));
        assert_eq!(
            run(Some("size=500&x=1&size=5")).as_deref(),
            Some("size=100&x=1")
        );
    }

    #[test]
    fn encoded_name_and_value_are_decoded_before_the_rule() {
        assert_eq!(
            run(Some("%73ize=%31%30%30%30")).as_deref(),
            Some("size=100")
        );
    }

    #[test]
    fn invalid_value_gets_default_or_400() {
        assert_eq!(run(Some("size=abc")).as_deref(), Some("size=20"));
        let e = apply(
            Some("size=abc"),
            &QueryLimits::default(),
            &size_rule(OnInvalid::Reject),
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn limits_refuse_too_many_too_long_and_bad_escapes() {
        let lim = QueryLimits {
            max_params: 2,
            max_name_length: 4,
            max_value_length: 4,
        };
        assert!(apply(Some("a=1&b=2&c=3"), &lim, &[]).is_err());
        assert!(apply(Some("abcde=1"), &lim, &[]).is_err());
        assert!(apply(Some("a=12345"), &lim, &[]).is_err());
        assert!(apply(Some("a=%zz"), &lim, &[]).is_err());
        assert_eq!(apply(Some("a=1&&b=2"), &lim, &[]).unwrap(), None);
    }
}
