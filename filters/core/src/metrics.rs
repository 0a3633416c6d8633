//! Labelled metrics for proxy-wasm counters.
//!
//! proxy-wasm metrics have a name and no labels. Envoy (and Istio) give them
//! labels by **tag extraction** from the stat name: the bootstrap's
//! `stats_config.stats_tags` has one regex per tag, `(<tag>=\.=(.*?);\.;)`,
//! which cuts `<tag>=.=<value>;.;` out of the name and turns it into a tag;
//! `/stats/prometheus` prints the rest of the name (without `envoy_`: wasm
//! metrics live in Envoy's custom `wasmcustom` namespace) and the tags as
//! labels. This is the encoding Istio's own wasm stats use and what its
//! `meshConfig.defaultConfig.extraStatTags` generates regexes for.
//!
//! [`tagged`]`("sanitize_denied_total", &[("gateway","web"),("route","api"),("reason","invalid_path")])`
//! → `gateway=.=web;.;route=.=api;.;reason=.=invalid_path;.;sanitize_denied_total`
//! → `sanitize_denied_total{gateway="web",route="api",reason="invalid_path"}`.
//!
//! The tag names are fixed ([`TAGS`]) and each must have a regex in the
//! Envoy bootstrap (`envoy/envoy.yaml.tmpl`, `stats_config`); values are
//! reduced to `[A-Za-z0-9_-]` so that they can never contain the separators.
//! Without the regexes the full name would be exported, mangled — a tag is
//! never silently lost, but the metric name changes.

use crate::decision::label_value;

/// Tag (label) names the filters may use; each has a `stats_tags` regex.
pub const TAGS: &[&str] = &["gateway", "route", "reason"];

/// Distinct labelled metric names one VM defines at most (see the
/// filters' bounds: routes × reasons come from config and code, not from
/// clients). Past it, a counter falls back to its unlabelled name.
pub const MAX_TAGGED_METRICS: usize = 2048;

/// The stat name that carries `tags` for metric `name`. Tags whose name is
/// not in [`TAGS`] are left out (they would not be extracted).
pub fn tagged(name: &str, tags: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(name.len() + 48);
    for (k, v) in tags {
        if !TAGS.contains(k) {
            continue;
        }
        out.push_str(k);
        out.push_str("=.=");
        out.push_str(&label_value(v));
        out.push_str(";.;");
    }
    out.push_str(name);
    out
}

/// The `stats_tags` regex for one tag, as written in the Envoy bootstrap.
pub fn tag_regex(tag: &str) -> String {
    format!(r"({tag}=\.=(.*?);\.;)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_first_and_the_name_last() {
        assert_eq!(
            tagged(
                "sanitize_denied_total",
                &[
                    ("gateway", "web"),
                    ("route", "api"),
                    ("reason", "invalid_path")
                ]
            ),
            "gateway=.=web;.;route=.=api;.;reason=.=invalid_path;.;sanitize_denied_total"
        );
    }

    #[test]
    fn values_cannot_carry_separators_and_unknown_tags_are_dropped() {
        assert_eq!(
            tagged("x_total", &[("route", "a;.;b=.=c"), ("user", "alice")]),
            "route=.=a___b___c;.;x_total"
        );
        assert_eq!(
            tagged("x_total", &[("route", "")]),
            "route=.=none;.;x_total"
        );
    }

    #[test]
    fn the_regex_cuts_exactly_one_tag() {
        assert_eq!(tag_regex("route"), r"(route=\.=(.*?);\.;)");
    }
}
