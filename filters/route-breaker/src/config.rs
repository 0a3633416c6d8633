//! route-breaker's JSON config: the serde shape ([`RouteBreakerConfig`],
//! unknown fields rejected, JSON Schema derived) and its compiled form
//! ([`Compiled`]), built once in `on_configure`.
//!
//! Breaker settings carry Resilience4j's names in snake case
//! (`failureRateThreshold` → `failure_rate_threshold`) and its defaults.

use filter_core::config::ConfigError;
use filter_core::duration::ConfigDuration;
use filter_core::route::RouteMatcher;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::breaker::{Settings, WindowKind, MAX_COUNT_WINDOW, MAX_TIME_WINDOW};

/// Most breakers in one configuration (each is one shared-data key).
pub const MAX_ROUTES: usize = 64;
/// Longest `name` of the config or of a route.
pub const MAX_NAME_LEN: usize = 64;

/// The route-breaker filter's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBreakerConfig {
    /// The scope of this configuration's breakers, e.g. the gateway
    /// (`web`). Breaker state lives in shared data under
    /// `route-breaker/breaker/<name>/<route>`, shared by every plugin with the same
    /// `vm_id`: listeners that must not share breakers need distinct names.
    /// Lower-case letters, digits, `-` and `_`.
    pub name: String,
    /// The breakers, first match wins. A request that matches none passes
    /// untouched.
    #[serde(default)]
    pub routes: Vec<RouteRule>,
    /// Dry run (default false): the breakers count and change state as
    /// usual, but a call an open (or full half-open) breaker would reject
    /// is logged (`"dry_run":true`), counted in
    /// `route_breaker_dry_run_denied_total` and let through (not recorded
    /// in the breaker's window).
    #[serde(default)]
    pub dry_run: bool,
}

/// One breaker and the requests it guards.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Breaker name, unique in this config; used in shared-data keys,
    /// metrics and denials. Lower-case letters, digits, `-` and `_`.
    pub name: String,
    /// Path prefix, matched at segment boundaries on the normalised path
    /// (default `/` when `route_name` is given). At least one of `prefix`
    /// and `route_name` is required; with both, both must match.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Match the path exactly instead of as a prefix (default false).
    #[serde(default)]
    pub exact: bool,
    /// Methods (upper case); empty or absent means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Envoy's route name (the `name` of the route entry the request
    /// matched, Envoy property `xds.route_name`).
    #[serde(default)]
    pub route_name: Option<String>,
    /// The breaker's settings (Resilience4j's defaults when absent).
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// Which sliding window the CLOSED state keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlidingWindowType {
    /// The last `sliding_window_size` calls.
    #[default]
    CountBased,
    /// The calls that completed in the last `sliding_window_size` seconds.
    TimeBased,
}

/// A response status, or a class/range of them, counted as a failure.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusSpec {
    /// One status, e.g. `503`.
    Code(u16),
    /// `"5xx"` (a class) or `"500-504"` (an inclusive range).
    Range(String),
}

/// Resilience4j's CircuitBreaker settings, in snake case.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// `failureRateThreshold`: percent of failed calls in the window at or
    /// above which the breaker opens, in (0, 100] (default 50).
    #[serde(default = "default_fifty")]
    pub failure_rate_threshold: f64,
    /// `slowCallRateThreshold`: percent of slow calls at or above which the
    /// breaker opens, in (0, 100] (default 100).
    #[serde(default = "default_hundred")]
    pub slow_call_rate_threshold: f64,
    /// `slowCallDurationThreshold`: a call whose response headers take
    /// longer than this (from this filter passing the request on) is slow
    /// (default "60s").
    #[serde(default = "default_sixty_seconds")]
    pub slow_call_duration_threshold: ConfigDuration,
    /// `minimumNumberOfCalls`: calls the window must hold before rates are
    /// computed (default 100; for a count-based window, at most its size
    /// counts).
    #[serde(default = "default_hundred_calls")]
    pub minimum_number_of_calls: u32,
    /// `slidingWindowType`: `"count_based"` (default) or `"time_based"`.
    #[serde(default)]
    pub sliding_window_type: SlidingWindowType,
    /// `slidingWindowSize`: calls (count based, ≤ 1000) or seconds (time
    /// based, ≤ 300) (default 100).
    #[serde(default = "default_hundred_calls")]
    pub sliding_window_size: u32,
    /// `waitDurationInOpenState`: how long an open breaker rejects before
    /// admitting probes (default "60s").
    #[serde(default = "default_sixty_seconds")]
    pub wait_duration_in_open_state: ConfigDuration,
    /// `permittedNumberOfCallsInHalfOpenState`: probes admitted (across all
    /// workers) in HALF_OPEN; their outcomes decide open or closed
    /// (default 10).
    #[serde(default = "default_ten")]
    pub permitted_number_of_calls_in_half_open_state: u32,
    /// `maxWaitDurationInHalfOpenState`: a HALF_OPEN state older than this
    /// opens again, so that a lost probe cannot wedge the breaker; "0s"
    /// (default) waits for every probe.
    #[serde(default)]
    pub max_wait_duration_in_half_open_state: ConfigDuration,
    /// Response statuses that count as failures (default `["5xx"]`). An
    /// upstream reset, connection failure or timeout is always a failure.
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<StatusSpec>,
}

fn default_fifty() -> f64 {
    50.0
}
fn default_hundred() -> f64 {
    100.0
}
fn default_sixty_seconds() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
fn default_hundred_calls() -> u32 {
    100
}
fn default_ten() -> u32 {
    10
}
fn default_failure_statuses() -> Vec<StatusSpec> {
    vec![StatusSpec::Range("5xx".into())]
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate_threshold: default_fifty(),
            slow_call_rate_threshold: default_hundred(),
            slow_call_duration_threshold: default_sixty_seconds(),
            minimum_number_of_calls: default_hundred_calls(),
            sliding_window_type: SlidingWindowType::default(),
            sliding_window_size: default_hundred_calls(),
            wait_duration_in_open_state: default_sixty_seconds(),
            permitted_number_of_calls_in_half_open_state: default_ten(),
            max_wait_duration_in_half_open_state: ConfigDuration::default(),
            failure_statuses: default_failure_statuses(),
        }
    }
}

/// A compiled breaker route.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub name: String,
    pub matcher: RouteMatcher,
    pub route_name: Option<String>,
    pub settings: Settings,
    /// Inclusive status ranges counted as failures.
    pub failure_statuses: Vec<(u16, u16)>,
    /// The shared-data key of this breaker's state.
    pub key: String,
}

impl CompiledRoute {
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.failure_statuses
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// The ready-to-use configuration, shared by every request context.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub name: String,
    pub routes: Vec<CompiledRoute>,
    /// Some route matches on Envoy's route name (one property read per request).
    pub uses_route_name: bool,
    pub dry_run: bool,
}

impl Compiled {
    /// The index of the first breaker that guards this request.
    pub fn route(&self, method: &str, path: &str, route_name: Option<&str>) -> Option<usize> {
        self.routes.iter().position(|r| {
            r.matcher.matches(method, path)
                && r.route_name
                    .as_deref()
                    .is_none_or(|want| route_name == Some(want))
        })
    }
}

fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ConfigError::at(
            path,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(ConfigError::at(
            path,
            format!("{name:?} may contain only a-z, 0-9, '-' and '_'"),
        ));
    }
    Ok(())
}

fn check_percent(path: String, v: f64) -> Result<(), ConfigError> {
    if !(v > 0.0 && v <= 100.0) {
        return Err(ConfigError::at(
            path,
            "must be greater than 0 and at most 100",
        ));
    }
    Ok(())
}

fn compile_status(path: &str, spec: &StatusSpec) -> Result<(u16, u16), ConfigError> {
    let bad = || {
        ConfigError::at(
            path,
            "expected a status (100-599), a class such as \"5xx\" or a range such as \"500-504\"",
        )
    };
    let valid = |c: u16| (100..=599).contains(&c);
    let (lo, hi) = match spec {
        StatusSpec::Code(c) => (*c, *c),
        StatusSpec::Range(s) => {
            if let Some(class) = s.strip_suffix("xx") {
                let d: u16 = class.parse().map_err(|_| bad())?;
                if class.len() != 1 {
                    return Err(bad());
                }
                (d * 100, d * 100 + 99)
            } else {
                let (a, b) = s.split_once('-').ok_or_else(bad)?;
                let a: u16 = a.trim().parse().map_err(|_| bad())?;
                let b: u16 = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                (a, b)
            }
        }
    };
    if !valid(lo) || !valid(hi) {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn compile_settings(at: &str, b: &BreakerConfig) -> Result<Settings, ConfigError> {
    check_percent(
        format!("{at}.failure_rate_threshold"),
        b.failure_rate_threshold,
    )?;
    check_percent(
        format!("{at}.slow_call_rate_threshold"),
        b.slow_call_rate_threshold,
    )?;
    if b.minimum_number_of_calls == 0 {
        return Err(ConfigError::at(
            format!("{at}.minimum_number_of_calls"),
            "must be at least 1",
        ));
    }
    let window = match b.sliding_window_type {
        SlidingWindowType::CountBased => {
            if b.sliding_window_size == 0 || b.sliding_window_size > MAX_COUNT_WINDOW {
                return Err(ConfigError::at(
                    format!("{at}.sliding_window_size"),
                    format!("a count-based window holds 1 to {MAX_COUNT_WINDOW} calls"),
                ));
            }
            WindowKind::CountBased(b.sliding_window_size)
        }
        SlidingWindowType::TimeBased => {
            if b.sliding_window_size == 0 || b.sliding_window_size > MAX_TIME_WINDOW {
                return Err(ConfigError::at(
                    format!("{at}.sliding_window_size"),
                    format!("a time-based window spans 1 to {MAX_TIME_WINDOW} seconds"),
                ));
            }
            WindowKind::TimeBased(b.sliding_window_size)
        }
    };
    if b.wait_duration_in_open_state.as_duration().as_millis() == 0 {
        return Err(ConfigError::at(
            format!("{at}.wait_duration_in_open_state"),
            "must be at least 1ms",
        ));
    }
    let permitted = b.permitted_number_of_calls_in_half_open_state;
    if permitted == 0 || permitted > 1000 {
        return Err(ConfigError::at(
            format!("{at}.permitted_number_of_calls_in_half_open_state"),
            "must be between 1 and 1000",
        ));
    }
    let ms = |d: ConfigDuration| u64::try_from(d.as_duration().as_millis()).unwrap_or(u64::MAX);
    Ok(Settings {
        failure_rate_threshold: b.failure_rate_threshold,
        slow_call_rate_threshold: b.slow_call_rate_threshold,
        slow_call_duration_threshold_ms: ms(b.slow_call_duration_threshold),
        minimum_number_of_calls: b.minimum_number_of_calls,
        window,
        wait_duration_in_open_state_ms: ms(b.wait_duration_in_open_state),
        permitted_number_of_calls_in_half_open_state: permitted,
        max_wait_duration_in_half_open_state_ms: ms(b.max_wait_duration_in_half_open_state),
    })
}

impl TryFrom<RouteBreakerConfig> for Compiled {
    type Error = ConfigError;

    fn try_from(c: RouteBreakerConfig) -> Result<Self, ConfigError> {
        check_name("name", &c.name)?;
        if c.routes.len() > MAX_ROUTES {
            return Err(ConfigError::at(
                "routes",
                format!("at most {MAX_ROUTES} breakers per configuration"),
            ));
        }
        let mut routes: Vec<CompiledRoute> = Vec::with_capacity(c.routes.len());
        for (i, r) in c.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            check_name(&format!("{at}.name"), &r.name)?;
            if routes.iter().any(|o| o.name == r.name) {
                return Err(ConfigError::at(
                    format!("{at}.name"),
                    format!("duplicate breaker name {:?}", r.name),
                ));
            }
            if let Some(rn) = &r.route_name {
                if rn.is_empty() {
                    return Err(ConfigError::at(
                        format!("{at}.route_name"),
                        "must not be empty",
                    ));
                }
            }
            let prefix = match (&r.prefix, &r.route_name) {
                (Some(p), _) => p.as_str(),
                (None, Some(_)) => "/",
                (None, None) => {
                    return Err(ConfigError::at(
                        format!("{at}.prefix"),
                        "give a prefix, a route_name or both",
                    ))
                }
            };
            let matcher = RouteMatcher::new(&at, prefix, &r.methods)?.exact(r.exact);
            let bat = format!("{at}.breaker");
            let settings = compile_settings(&bat, &r.breaker)?;
            let mut failure_statuses = Vec::with_capacity(r.breaker.failure_statuses.len());
            for (j, spec) in r.breaker.failure_statuses.iter().enumerate() {
                failure_statuses.push(compile_status(
                    &format!("{bat}.failure_statuses[{j}]"),
                    spec,
                )?);
            }
            routes.push(CompiledRoute {
                name: r.name.clone(),
                matcher,
                route_name: r.route_name.clone(),
                settings,
                failure_statuses,
                key: filter_core::shared::key("route-breaker", "breaker", &[&c.name, &r.name]),
            });
        }
        let uses_route_name = routes.iter().any(|r| r.route_name.is_some());
        Ok(Compiled {
            name: c.name,
            routes,
            uses_route_name,
            dry_run: c.dry_run,
        })
    }
}

/// Parses and compiles a JSON config.
pub fn load(bytes: &[u8]) -> Result<Compiled, ConfigError> {
    filter_core::config::load::<RouteBreakerConfig, Compiled>(bytes)
}

/// The JSON Schema of [`RouteBreakerConfig`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RouteBreakerConfig)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resilience4j_defaults_apply_when_settings_are_absent() {
        let c = load(br#"{"name":"web","routes":[{"name":"a","prefix":"/a/"}]}"#).unwrap();
        let s = &c.routes[0].settings;
        assert_eq!(s.failure_rate_threshold, 50.0);
        assert_eq!(s.slow_call_rate_threshold, 100.0);
        assert_eq!(s.slow_call_duration_threshold_ms, 60_000);
        assert_eq!(s.minimum_number_of_calls, 100);
        assert_eq!(s.window, WindowKind::CountBased(100));
        assert_eq!(s.wait_duration_in_open_state_ms, 60_000);
        assert_eq!(s.permitted_number_of_calls_in_half_open_state, 10);
        assert_eq!(c.routes[0].failure_statuses, vec![(500, 599)]);
        assert_eq!(c.routes[0].key, "route-breaker/breaker/web/a");
        assert!(!c.uses_route_name);
    }

    #[test]
    fn statuses_accept_codes_classes_and_ranges() {
        let c = load(
            br#"{"name":"x","routes":[{"name":"a","prefix":"/","breaker":{"failure_statuses":[429,"5xx","400-404"]}}]}"#,
        )
        .unwrap();
        let r = &c.routes[0];
        assert!(r.is_failure_status(429) && r.is_failure_status(503) && r.is_failure_status(402));
        assert!(!r.is_failure_status(200) && !r.is_failure_status(405));
    }

    #[test]
    fn route_name_alone_matches_every_path_of_that_route() {
        let c = load(
            br#"{"name":"x","routes":[{"name":"a","route_name":"unstable","methods":["GET"]}]}"#,
        )
        .unwrap();
        assert!(c.uses_route_name);
        assert_eq!(c.route("GET", "/anything", Some("unstable")), Some(0));
        assert_eq!(c.route("GET", "/anything", Some("api")), None);
        assert_eq!(c.route("POST", "/anything", Some("unstable")), None);
    }
}
