//! proxy-wasm metrics over Envoy's dynamic-module metrics.
//!
//! The filters define metrics by name (`proxy_define_metric`) and get a
//! number; labelled counters are defined on first use, from a request. A
//! dynamic module defines its metrics on a filter *configuration*
//! (`..._http_filter_config_define_counter`) and Envoy keeps them in that
//! configuration's table, which is not meant to grow while workers read it.
//! So the native host never calls Envoy's metric functions from a worker:
//!
//! * [`Registry`]: metric name → the number the filters get (process-wide,
//!   the same number on every thread, like one wasm VM's ids);
//! * [`Pending`]: per filter configuration, what the workers counted since
//!   the last flush (counter deltas, last gauge values, histogram samples);
//!   a flush on Envoy's main thread (`..._config_scheduler_commit`) hands
//!   the deltas to Envoy: at once after a quiet spell (a counter reaches
//!   `/stats` one main-thread loop turn after the request), at most every
//!   [`FLUSH_EVERY_MS`] under load ([`flush_now`]).
//!
//! Envoy refuses new metrics once a configuration is built (`Frozen`,
//! abi.h's metrics result 3). So a metric the filter defines in its
//! `on_configure` on the main thread (fixed names, route-breaker's per-route
//! names) is defined in Envoy right then, under its full proxy-wasm name
//! (the tag-extraction regexes of the bootstrap make its labels, exactly as
//! for wasm); the labelled counters the filters define on first use from a
//! request (`filter_core::metrics::tagged` names) are pre-defined at
//! configuration time from [`LABELLED`] as Envoy metrics with labels, and
//! a flush splits the proxy-wasm name back into the base name and the
//! label values ([`parse_tagged`]).
//!
//! Bounded: [`MAX_METRICS`] names (the filters cap their labelled names at
//! `filter_core::metrics::MAX_TAGGED_METRICS` per filter) and
//! [`MAX_SAMPLES`] histogram samples between two flushes (more are dropped).

use std::collections::HashMap;

/// Distinct metric names the process defines at most.
pub const MAX_METRICS: usize = 16_384;
/// Histogram samples kept between two flushes at most.
pub const MAX_SAMPLES: usize = 4_096;

/// The labelled counters the filters define on first use (base name, label
/// names in `filter_core::metrics::TAGS` order), kept beside the filters'
/// `increment_tagged` calls; a configuration pre-defines the ones of its
/// filter (the names that start with the filter's name and `_`). A tagged
/// counter missing here is dropped, with one warning per process.
pub const LABELLED: &[(&str, &[&str])] = &[
    ("sanitize_denied_total", &["gateway", "route", "reason"]),
    (
        "sanitize_dry_run_denied_total",
        &["gateway", "route", "reason"],
    ),
    ("sanitize_rewritten_total", &["gateway", "route"]),
    ("jwt_denied_total", &["gateway", "route", "reason"]),
    ("jwt_dry_run_denied_total", &["gateway", "route", "reason"]),
    ("jwt_anonymous_total", &["gateway", "route"]),
    ("e2ee_decrypted_total", &["gateway", "route"]),
    ("e2ee_denied_total", &["gateway", "route", "reason"]),
    ("fds_block_denied_total", &["gateway", "route", "reason"]),
    (
        "fds_block_dry_run_denied_total",
        &["gateway", "route", "reason"],
    ),
    ("oidc_logins_failed_total", &["reason"]),
    ("oidc_denied_total", &["gateway", "route", "reason"]),
    ("passport_denied_total", &["gateway", "route", "reason"]),
    (
        "passport_dry_run_denied_total",
        &["gateway", "route", "reason"],
    ),
    ("replay_guard_verified_total", &["gateway", "route"]),
    ("replay_guard_denied_total", &["gateway", "route", "reason"]),
    (
        "replay_guard_dry_run_denied_total",
        &["gateway", "route", "reason"],
    ),
    ("san_authz_allowed_total", &["gateway", "route"]),
    ("san_authz_denied_total", &["gateway", "route", "reason"]),
    (
        "san_authz_dry_run_denied_total",
        &["gateway", "route", "reason"],
    ),
];

/// The [`LABELLED`] counters of `filter` (its name as in the envelope);
/// all of them for `chain`, which may run any filter.
pub fn labelled_for(
    filter: &str,
) -> impl Iterator<Item = (&'static str, &'static [&'static str])> + '_ {
    LABELLED.iter().copied().filter(move |(n, _)| {
        filter == "chain"
            || n.strip_prefix(filter)
                .is_some_and(|rest| rest.starts_with('_'))
    })
}

/// Splits a `filter_core::metrics::tagged` name into its base name and its
/// (label, value) pairs, in order.
pub fn parse_tagged(name: &str) -> (&str, Vec<(&str, &str)>) {
    let mut rest = name;
    let mut labels = Vec::new();
    while let Some((pair, after)) = rest.split_once(";.;") {
        let Some((k, v)) = pair.split_once("=.=") else {
            break;
        };
        labels.push((k, v));
        rest = after;
    }
    (rest, labels)
}

/// proxy-wasm's metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// From proxy-wasm's `MetricType` number.
    pub fn from_abi(v: u32) -> Option<Kind> {
        match v {
            0 => Some(Kind::Counter),
            1 => Some(Kind::Gauge),
            2 => Some(Kind::Histogram),
            _ => None,
        }
    }
}

/// Metric names and their numbers (1-based; 0 is never handed out).
#[derive(Debug, Default)]
pub struct Registry {
    defs: Vec<(Kind, String)>,
    ids: HashMap<(Kind, String), u32>,
}

impl Registry {
    /// The number of metric `name` of `kind`, defining it on first use;
    /// `None` past [`MAX_METRICS`].
    pub fn define(&mut self, kind: Kind, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(&(kind, name.to_string())) {
            return Some(*id);
        }
        if self.defs.len() >= MAX_METRICS {
            return None;
        }
        self.defs.push((kind, name.to_string()));
        let id = u32::try_from(self.defs.len()).ok()?;
        self.ids.insert((kind, name.to_string()), id);
        Some(id)
    }

    /// Kind and name of metric `id`.
    pub fn get(&self, id: u32) -> Option<(Kind, &str)> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        self.defs.get(i).map(|(k, n)| (*k, n.as_str()))
    }
}

/// What the workers recorded for one filter configuration since the last
/// flush.
#[derive(Debug, Default)]
pub struct Pending {
    counters: HashMap<u32, u64>,
    gauges: HashMap<u32, u64>,
    samples: Vec<(u32, u64)>,
    /// A flush has been scheduled and has not run yet.
    pub scheduled: bool,
}

/// One flush's worth of changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub counters: Vec<(u32, u64)>,
    pub gauges: Vec<(u32, u64)>,
    pub samples: Vec<(u32, u64)>,
}

impl Pending {
    /// Adds `by` to counter `id`.
    pub fn increment(&mut self, id: u32, by: u64) {
        let c = self.counters.entry(id).or_insert(0);
        *c = c.saturating_add(by);
    }

    /// Sets gauge `id` (the last value wins).
    pub fn set_gauge(&mut self, id: u32, v: u64) {
        self.gauges.insert(id, v);
    }

    /// Records a histogram sample (dropped past [`MAX_SAMPLES`]).
    pub fn record(&mut self, id: u32, v: u64) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push((id, v));
        }
    }

    /// True (and a flush is then considered scheduled) when something is
    /// waiting and no flush is scheduled yet: the caller schedules one.
    pub fn claim_flush(&mut self) -> bool {
        let waiting =
            !(self.counters.is_empty() && self.gauges.is_empty() && self.samples.is_empty());
        if waiting && !self.scheduled {
            self.scheduled = true;
            return true;
        }
        false
    }

    /// Everything recorded since the last flush; the next change can schedule again.
    pub fn take(&mut self) -> Batch {
        self.scheduled = false;
        let mut counters: Vec<_> = self.counters.drain().collect();
        let mut gauges: Vec<_> = self.gauges.drain().collect();
        counters.sort_unstable();
        gauges.sort_unstable();
        Batch {
            counters,
            gauges,
            samples: std::mem::take(&mut self.samples),
        }
    }
}

/// Whether a change may schedule its flush right away: only when the last
/// flush is at least [`FLUSH_EVERY_MS`] old (a first request after a quiet
/// spell reaches `/stats` one main-thread loop turn later); otherwise the
/// host's flusher thread schedules it within [`FLUSH_EVERY_MS`]. Under load
/// that is at most one main-thread wake-up per configuration per
/// [`FLUSH_EVERY_MS`] instead of one per request.
pub fn flush_now(last_flush_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(last_flush_ms) >= FLUSH_EVERY_MS
}

/// The flush period under load (ms).
pub const FLUSH_EVERY_MS: u64 = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_number_and_kinds_are_separate() {
        let mut r = Registry::default();
        let a = r.define(Kind::Counter, "a_total").unwrap();
        assert_eq!(r.define(Kind::Counter, "a_total"), Some(a));
        let g = r.define(Kind::Gauge, "a_total").unwrap();
        assert_ne!(a, g);
        assert_eq!(r.get(a), Some((Kind::Counter, "a_total")));
        assert_eq!(r.get(0), None);
        assert_eq!(r.get(99), None);
    }

    #[test]
    fn the_registry_is_bounded() {
        let mut r = Registry::default();
        for i in 0..MAX_METRICS {
            assert!(r.define(Kind::Counter, &i.to_string()).is_some());
        }
        assert_eq!(r.define(Kind::Counter, "one-more"), None);
        assert!(r.define(Kind::Counter, "0").is_some());
    }

    #[test]
    fn one_flush_is_claimed_at_a_time_and_a_flush_hands_over_the_sums() {
        let mut p = Pending::default();
        assert!(!p.claim_flush(), "nothing waiting, nothing to flush");
        p.increment(1, 1);
        assert!(p.claim_flush());
        p.increment(1, 2);
        p.set_gauge(2, 5);
        p.set_gauge(2, 7);
        p.record(3, 40);
        assert!(!p.claim_flush(), "already scheduled");
        let b = p.take();
        assert_eq!(b.counters, vec![(1, 3)]);
        assert_eq!(b.gauges, vec![(2, 7)]);
        assert_eq!(b.samples, vec![(3, 40)]);
        assert_eq!(p.take(), Batch::default());
        p.increment(1, 1);
        assert!(
            p.claim_flush(),
            "after a flush the next change schedules again"
        );
    }

    #[test]
    fn a_change_flushes_at_once_only_after_a_quiet_spell() {
        assert!(flush_now(1_000, 1_000 + FLUSH_EVERY_MS));
        assert!(!flush_now(1_000, 1_005));
        assert!(flush_now(0, 1_750_000_000_000), "the very first change");
    }

    #[test]
    fn a_tagged_name_splits_into_its_base_and_labels() {
        let full = filter_core::metrics::tagged(
            "sanitize_denied_total",
            &[
                ("gateway", "web"),
                ("route", "api"),
                ("reason", "invalid_path"),
            ],
        );
        assert_eq!(
            parse_tagged(&full),
            (
                "sanitize_denied_total",
                vec![
                    ("gateway", "web"),
                    ("route", "api"),
                    ("reason", "invalid_path")
                ]
            )
        );
        assert_eq!(
            parse_tagged("sanitize_allowed_total"),
            ("sanitize_allowed_total", vec![])
        );
    }

    #[test]
    fn a_filter_predefines_only_its_own_labelled_counters() {
        let s: Vec<_> = labelled_for("san_authz").map(|(n, _)| n).collect();
        assert_eq!(
            s,
            [
                "san_authz_allowed_total",
                "san_authz_denied_total",
                "san_authz_dry_run_denied_total"
            ]
        );
        assert!(labelled_for("sanitize").all(|(n, _)| n.starts_with("sanitize_")));
        // The chain runs any filter: every labelled counter.
        assert_eq!(labelled_for("chain").count(), LABELLED.len());
        for (_, labels) in LABELLED {
            assert!(labels
                .iter()
                .all(|l| filter_core::metrics::TAGS.contains(l)));
        }
    }

    #[test]
    fn histogram_samples_are_bounded_between_flushes() {
        let mut p = Pending::default();
        for i in 0..(MAX_SAMPLES as u64 + 10) {
            p.record(1, i);
        }
        assert_eq!(p.take().samples.len(), MAX_SAMPLES);
    }
}
