//! A proxy-wasm HTTP filter that does nothing: every callback continues.
//! `make bench` puts it on its own listener to measure the floor every wasm
//! filter pays (VM entry, context creation, callbacks), against which the
//! real filters' added cost is judged. Not shipped in any gateway chain.
//!
//! With a plugin configuration `<kind>:<n>` it makes `n` host calls of one
//! kind in `on_http_request_headers` and nothing else, so that the bench can
//! price one host call (docs/performance.md, "What a host call costs"):
//! `property` (get_property `xds.route_name`), `header` (get_http_request_header
//! `:path`), `metric` (increment_metric on one counter), `time`
//! (get_current_time), `set_header` (replace `x-bench-probe`), `header_map`
//! (get_http_request_headers: all of them), `set_property` (a 64-byte filter
//! state value, as the identity hand-over writes). An empty or
//! unknown configuration means no calls.
//!
//! `script:<op>;<op>;...` makes a given sequence of calls instead, so the bench
//! can replay the host calls a real filter makes on a request without the
//! filter's own code ("mimic" targets, docs/performance.md): `map` (all
//! request headers), `hdr=<name>` (one header), `prop=<a.b>` (get_property),
//! `set=<name>:<len>` (replace a header with `len` bytes), `path=<value>`
//! (replace `:path`), `del=<name>` (remove a header), `state=<len>` (a
//! filter-state value of `len` bytes), `time`, `metric`, `shared=<len>` (read a
//! shared-data value of `len` bytes, written at configuration).

pub mod spin;
pub use spin::spin;

/// One host call of a scripted probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Map,
    Header(String),
    Property(Vec<String>),
    Set(String, usize),
    Path(String),
    Remove(String),
    State(usize),
    Time,
    Metric,
    Shared(usize),
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        let (kind, arg) = s.split_once('=').unwrap_or((s, ""));
        Some(match kind {
            "map" => Op::Map,
            "hdr" => Op::Header(arg.to_string()),
            "prop" => Op::Property(arg.split('.').map(String::from).collect()),
            "set" => {
                let (name, len) = arg.rsplit_once(':')?;
                Op::Set(name.to_string(), len.parse().ok()?)
            }
            "path" => Op::Path(arg.to_string()),
            "del" => Op::Remove(arg.to_string()),
            "state" => Op::State(arg.parse().ok()?),
            "time" => Op::Time,
            "metric" => Op::Metric,
            "shared" => Op::Shared(arg.parse().ok()?),
            _ => return None,
        })
    }
}

/// A probe: which host call, how many times per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    None,
    Property(u32),
    Header(u32),
    Metric(u32),
    Time(u32),
    SetHeader(u32),
    HeaderMap(u32),
    SetProperty(u32),
    /// `n` rounds of [`spin`], no host call.
    Spin(u32),
    Script(Vec<Op>),
    /// One `dispatch_http_call` per request to the cluster `gateway_store`
    /// (`GET /stats`, no Redis), the request held until it answers: what
    /// Envoy spends on a callout, without any filter's own work.
    Callout,
}

impl Probe {
    /// Parses `<kind>:<n>`; anything else is [`Probe::None`].
    pub fn parse(s: &str) -> Probe {
        if let Some(script) = s.trim().strip_prefix("script:") {
            let ops: Option<Vec<Op>> = script
                .split(';')
                .filter(|o| !o.is_empty())
                .map(Op::parse)
                .collect();
            return ops.map_or(Probe::None, Probe::Script);
        }
        let Some((kind, n)) = s.trim().split_once(':') else {
            return Probe::None;
        };
        let Ok(n) = n.parse::<u32>() else {
            return Probe::None;
        };
        match kind {
            "callout" => Probe::Callout,
            "property" => Probe::Property(n),
            "header" => Probe::Header(n),
            "metric" => Probe::Metric(n),
            "time" => Probe::Time(n),
            "set_header" => Probe::SetHeader(n),
            "header_map" => Probe::HeaderMap(n),
            "set_property" => Probe::SetProperty(n),
            "spin" => Probe::Spin(n),
            _ => Probe::None,
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    use std::rc::Rc;

    use super::{Op, Probe};
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MetricType};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(Root { probe: Rc::new(Probe::None), counter: 0 })
        });
    }}

    struct Root {
        probe: Rc<Probe>,
        counter: u32,
    }
    impl Context for Root {}
    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let cfg = self.get_plugin_configuration().unwrap_or_default();
            let probe = Probe::parse(&String::from_utf8_lossy(&cfg));
            if matches!(probe, Probe::Metric(_) | Probe::Script(_)) {
                self.counter =
                    hostcalls::define_metric(MetricType::Counter, "bench_probe_total").unwrap_or(0);
            }
            if let Probe::Script(ops) = &probe {
                for op in ops {
                    if let Op::Shared(len) = op {
                        let _ = hostcalls::set_shared_data(
                            "bench_probe_shared",
                            Some(&vec![b'x'; *len]),
                            None,
                        );
                    }
                }
            }
            self.probe = Rc::new(probe);
            true
        }
        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Noop {
                probe: self.probe.clone(),
                counter: self.counter,
            }))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Noop {
        probe: Rc<Probe>,
        counter: u32,
    }
    impl Context for Noop {
        fn on_http_call_response(&mut self, _t: u32, _h: usize, _b: usize, _tr: usize) {
            // as the filters do: read the status, then let the request go
            let _ = self.get_http_call_response_header(":status");
            self.resume_http_request();
        }
    }
    impl HttpContext for Noop {
        fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
            match *self.probe {
                Probe::None => {}
                Probe::Callout => {
                    let headers = vec![
                        (":method", "GET"),
                        (":path", "/stats"),
                        (":authority", "gateway_store"),
                    ];
                    let timeout = std::time::Duration::from_secs(1);
                    if self
                        .dispatch_http_call("gateway_store", headers, None, vec![], timeout)
                        .is_ok()
                    {
                        return Action::Pause;
                    }
                }
                Probe::Spin(n) => {
                    // black_box: the work is not optimised away
                    std::hint::black_box(super::spin(n));
                }
                Probe::Script(ref ops) => {
                    for op in ops {
                        self.run(op);
                    }
                }
                Probe::Property(n) => {
                    for _ in 0..n {
                        let _ = self.get_property(vec!["xds", "route_name"]);
                    }
                }
                Probe::Header(n) => {
                    for _ in 0..n {
                        let _ = self.get_http_request_header(":path");
                    }
                }
                Probe::Metric(n) => {
                    for _ in 0..n {
                        let _ = hostcalls::increment_metric(self.counter, 1);
                    }
                }
                Probe::Time(n) => {
                    for _ in 0..n {
                        let _ = self.get_current_time();
                    }
                }
                Probe::SetHeader(n) => {
                    for _ in 0..n {
                        self.set_http_request_header("x-bench-probe", Some("1"));
                    }
                }
                Probe::HeaderMap(n) => {
                    for _ in 0..n {
                        let _ = self.get_http_request_headers();
                    }
                }
                Probe::SetProperty(n) => {
                    for _ in 0..n {
                        self.set_property(vec!["wasm.bench_probe"], Some(&[b'x'; 64]));
                    }
                }
            }
            Action::Continue
        }
    }

    impl Noop {
        fn run(&self, op: &Op) {
            let req = proxy_wasm::types::MapType::HttpRequestHeaders;
            match op {
                Op::Map => {
                    let _ = hostcalls::get_map_bytes(req);
                }
                Op::Header(n) => {
                    let _ = hostcalls::get_map_value_bytes(req, n);
                }
                Op::Property(p) => {
                    let _ = hostcalls::get_property(p.iter().map(String::as_str).collect());
                }
                Op::Set(n, len) => {
                    let v = "x".repeat(*len);
                    let _ = hostcalls::set_map_value(req, n, Some(&v));
                }
                Op::Path(v) => {
                    let _ = hostcalls::set_map_value(req, ":path", Some(v));
                }
                Op::Remove(n) => {
                    let _ = hostcalls::set_map_value(req, n, None);
                }
                Op::State(len) => {
                    let _ =
                        hostcalls::set_property(vec!["bench_probe_state"], Some(&vec![b'x'; *len]));
                }
                Op::Time => {
                    let _ = hostcalls::get_current_time();
                }
                Op::Metric => {
                    let _ = hostcalls::increment_metric(self.counter, 1);
                }
                Op::Shared(_) => {
                    let _ = hostcalls::get_shared_data("bench_probe_shared");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Op, Probe};

    #[test]
    fn probes_parse() {
        assert_eq!(Probe::parse("property:10"), Probe::Property(10));
        assert_eq!(Probe::parse("metric:3"), Probe::Metric(3));
        assert_eq!(Probe::parse("spin:20"), Probe::Spin(20));
        assert_ne!(super::spin(2), super::spin(3));
        assert_eq!(Probe::parse(""), Probe::None);
        assert_eq!(Probe::parse("bogus:1"), Probe::None);
        assert_eq!(Probe::parse("header:x"), Probe::None);
        assert_eq!(
            Probe::parse("script:map;set=x-a:3;prop=xds.route_name;time"),
            Probe::Script(vec![
                Op::Map,
                Op::Set("x-a".into(), 3),
                Op::Property(vec!["xds".into(), "route_name".into()]),
                Op::Time
            ])
        );
        assert_eq!(Probe::parse("script:map;bogus"), Probe::None);
    }
}
