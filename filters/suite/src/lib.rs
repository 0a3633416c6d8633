//! # suite: every gateway filter in one module
//!
//! `suite.wasm` links the nine filter crates (built without their own entry
//! point, see each crate's `standalone` feature) and installs one root-context
//! factory that picks the filter by the plugin's `root_id`. In Envoy each
//! filter stays its own HTTP filter with its own `root_id` and JSON config;
//! what changes is that all the filters of a gateway share ONE VM per worker
//! (one `vm_id`): one VM entry, one memory, one module to fetch.
//! `envoy/render.py` (`WASM_BUILD=suite`) points every filter block at it;
//! docs/performance.md has the measurements and when to pick which build.
//!
//! Sharing a VM is safe because the filters' shared-data keys have disjoint
//! prefixes, the filter's own name (`filter_core::shared::key`: `jwt/`,
//! `replay-guard/`, `fds-block/`, `passport/`, `route-breaker/`; sanitize,
//! san-authz and e2ee keep none; oidc keeps its provider state per worker in VM memory) and their metrics are
//! named `<filter>_...`.

/// The `root_id`s this module serves (those of the per-filter builds).
pub const ROOT_IDS: [&str; 9] = [
    "sanitize",
    "jwt",
    "replay_guard",
    "fds_block",
    "passport",
    "route_breaker",
    "san_authz",
    "e2ee",
    "oidc",
];

/// Index into [`ROOT_IDS`] of a plugin's `root_id` (`None`: not ours).
pub fn filter_index(root_id: &[u8]) -> Option<usize> {
    ROOT_IDS.iter().position(|id| id.as_bytes() == root_id)
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    use proxy_wasm::traits::{Context, RootContext};
    use proxy_wasm::types::LogLevel;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(new_root);
    }}

    /// Called by the host for each plugin (root context) of this VM: the
    /// plugin's `root_id` is readable while its root context is created.
    fn new_root(context_id: u32) -> Box<dyn RootContext> {
        let root_id = proxy_wasm::hostcalls::get_property(vec!["plugin_root_id"])
            .ok()
            .flatten()
            .unwrap_or_default();
        match super::filter_index(&root_id) {
            Some(0) => sanitize::root_context(context_id),
            Some(1) => jwt::root_context(context_id),
            Some(2) => replay_guard::root_context(context_id),
            Some(3) => fds_block::root_context(context_id),
            Some(4) => passport::root_context(context_id),
            Some(5) => route_breaker::root_context(context_id),
            Some(6) => san_authz::root_context(context_id),
            Some(7) => e2ee::root_context(context_id),
            Some(8) => oidc::root_context(context_id),
            _ => Box::new(Unknown(String::from_utf8_lossy(&root_id).into_owned())),
        }
    }

    /// A plugin whose `root_id` names no filter of the suite: refuses its
    /// configuration, so Envoy rejects the config (and `failure_policy`
    /// applies) instead of running a filter that does nothing.
    struct Unknown(String);

    impl Context for Unknown {}

    impl RootContext for Unknown {
        fn on_configure(&mut self, _size: usize) -> bool {
            log::error!(
                "suite: unknown root_id {:?} (expected one of {:?})",
                self.0,
                super::ROOT_IDS
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_root_id_maps_to_its_filter() {
        for (i, id) in ROOT_IDS.iter().enumerate() {
            assert_eq!(filter_index(id.as_bytes()), Some(i));
        }
        assert_eq!(filter_index(b"noop"), None);
        assert_eq!(filter_index(b""), None);
    }
}
