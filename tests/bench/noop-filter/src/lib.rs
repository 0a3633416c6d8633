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

/// A probe: which host call, how many times per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    None,
    Property(u32),
    Header(u32),
    Metric(u32),
    Time(u32),
    SetHeader(u32),
    HeaderMap(u32),
    SetProperty(u32),
}

impl Probe {
    /// Parses `<kind>:<n>`; anything else is [`Probe::None`].
    pub fn parse(s: &str) -> Probe {
        let Some((kind, n)) = s.trim().split_once(':') else {
            return Probe::None;
        };
        let Ok(n) = n.parse::<u32>() else {
            return Probe::None;
        };
        match kind {
            "property" => Probe::Property(n),
            "header" => Probe::Header(n),
            "metric" => Probe::Metric(n),
            "time" => Probe::Time(n),
            "set_header" => Probe::SetHeader(n),
            "header_map" => Probe::HeaderMap(n),
            "set_property" => Probe::SetProperty(n),
            _ => Probe::None,
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    use super::Probe;
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MetricType};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(Root { probe: Probe::None, counter: 0 })
        });
    }}

    struct Root {
        probe: Probe,
        counter: u32,
    }
    impl Context for Root {}
    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let cfg = self.get_plugin_configuration().unwrap_or_default();
            self.probe = Probe::parse(&String::from_utf8_lossy(&cfg));
            if let Probe::Metric(_) = self.probe {
                self.counter =
                    hostcalls::define_metric(MetricType::Counter, "bench_probe_total").unwrap_or(0);
            }
            true
        }
        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Noop {
                probe: self.probe,
                counter: self.counter,
            }))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Noop {
        probe: Probe,
        counter: u32,
    }
    impl Context for Noop {}
    impl HttpContext for Noop {
        fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
            match self.probe {
                Probe::None => {}
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
}

#[cfg(test)]
mod tests {
    use super::Probe;

    #[test]
    fn probes_parse() {
        assert_eq!(Probe::parse("property:10"), Probe::Property(10));
        assert_eq!(Probe::parse("metric:3"), Probe::Metric(3));
        assert_eq!(Probe::parse(""), Probe::None);
        assert_eq!(Probe::parse("bogus:1"), Probe::None);
        assert_eq!(Probe::parse("header:x"), Probe::None);
    }
}
