//! proxy-wasm property paths → where the native host finds them.
//!
//! Envoy's wasm host answers `get_property` from its attribute table (CEL
//! names such as `xds.route_name`), and from filter state for what a plugin
//! stored with `set_property` (key `wasm.<path>`). A dynamic module reads
//! the same attributes by number (`envoy_dynamic_module_type_attribute_id`,
//! Envoy's abi.h) and the same filter state by key; this table is the
//! translation, for the paths the filters read (every other path is looked
//! up in filter state, like Envoy's wasm host does for unknown names).
//!
//! Values are encoded as the wasm host encodes them: strings as their
//! bytes, integers as 8 little-endian bytes.

/// How a property is read natively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `envoy_dynamic_module_callback_http_filter_get_attribute_string`.
    StringAttribute(u32),
    /// `envoy_dynamic_module_callback_http_filter_get_attribute_int`, as 8 LE bytes.
    IntAttribute(u32),
    /// The plugin's root id (the filter's name in the suite's table).
    RootId,
    /// Filter state under this key (`wasm.` + the path joined by `.`).
    FilterState(String),
    /// `connection.peer_certificate`: the `Cert=` of the XFCC element Envoy
    /// set from the verified connection, where the block says the listener
    /// sets it (`peer_certificate_from_xfcc`, crate::envelope); else absent.
    PeerCertificate,
    /// A path the native host cannot answer (no attribute of that name):
    /// reads as absent, like an attribute the wasm host does not have.
    Unsupported,
}

/// Attribute ids of `envoy_dynamic_module_type_attribute_id` (abi.h, ABI
/// v0.1.0 declaration order, which v0.2.x keeps). Only the ones mapped here.
pub mod attr {
    pub const RESPONSE_CODE: u32 = 15;
    pub const RESPONSE_CODE_DETAILS: u32 = 16;
    pub const RESPONSE_FLAGS: u32 = 17;
    pub const SOURCE_ADDRESS: u32 = 24;
    pub const SOURCE_PORT: u32 = 25;
    pub const DESTINATION_ADDRESS: u32 = 26;
    pub const DESTINATION_PORT: u32 = 27;
    pub const CONNECTION_MTLS: u32 = 29;
    pub const CONNECTION_REQUESTED_SERVER_NAME: u32 = 30;
    pub const CONNECTION_SUBJECT_PEER_CERTIFICATE: u32 = 33;
    pub const CONNECTION_URI_SAN_PEER_CERTIFICATE: u32 = 37;
    pub const XDS_ROUTE_NAME: u32 = 61;
    pub const XDS_VIRTUAL_HOST_NAME: u32 = 63;
}

/// Where property `path` is read from.
pub fn source(path: &[&[u8]]) -> Source {
    use attr::*;
    match path {
        [b"plugin_root_id"] => Source::RootId,
        [b"xds", b"route_name"] => Source::StringAttribute(XDS_ROUTE_NAME),
        [b"xds", b"virtual_host_name"] => Source::StringAttribute(XDS_VIRTUAL_HOST_NAME),
        [b"source", b"address"] => Source::StringAttribute(SOURCE_ADDRESS),
        [b"source", b"port"] => Source::IntAttribute(SOURCE_PORT),
        [b"destination", b"address"] => Source::StringAttribute(DESTINATION_ADDRESS),
        [b"destination", b"port"] => Source::IntAttribute(DESTINATION_PORT),
        [b"response", b"code"] => Source::IntAttribute(RESPONSE_CODE),
        [b"response", b"code_details"] => Source::StringAttribute(RESPONSE_CODE_DETAILS),
        [b"response", b"flags"] => Source::IntAttribute(RESPONSE_FLAGS),
        [b"connection", b"requested_server_name"] => {
            Source::StringAttribute(CONNECTION_REQUESTED_SERVER_NAME)
        }
        [b"connection", b"subject_peer_certificate"] => {
            Source::StringAttribute(CONNECTION_SUBJECT_PEER_CERTIFICATE)
        }
        [b"connection", b"uri_san_peer_certificate"] => {
            Source::StringAttribute(CONNECTION_URI_SAN_PEER_CERTIFICATE)
        }
        // The whole peer certificate (PEM) is a wasm-host extension with no
        // dynamic-module attribute (san-authz's `source: "connection"` reads
        // it): the host takes it from the XFCC Envoy itself set, where the
        // listener does (docs/native.md).
        [b"connection", b"peer_certificate"] => Source::PeerCertificate,
        [first, ..] if is_attribute_root(first) => Source::Unsupported,
        _ => Source::FilterState(filter_state_key(path)),
    }
}

/// Top-level names of Envoy's attribute table: a path under one of them is
/// an attribute, never a plugin's filter state.
fn is_attribute_root(first: &[u8]) -> bool {
    matches!(
        first,
        b"request"
            | b"response"
            | b"source"
            | b"destination"
            | b"connection"
            | b"upstream"
            | b"xds"
            | b"metadata"
            | b"filter_state"
            | b"node"
            | b"cluster_name"
            | b"route_name"
            | b"plugin_name"
            | b"plugin_vm_id"
    )
}

/// The filter-state key Envoy's wasm host uses for `set_property(path)`.
pub fn filter_state_key(path: &[&[u8]]) -> String {
    let joined: Vec<String> = path
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    format!("wasm.{}", joined.join("."))
}

/// An integer attribute as the wasm host encodes it.
pub fn int_bytes(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<&[u8]> {
        s.split('.').map(str::as_bytes).collect()
    }

    #[test]
    fn the_properties_the_filters_read_map_to_attributes() {
        assert_eq!(source(&p("xds.route_name")), Source::StringAttribute(61));
        assert_eq!(
            source(&p("xds.virtual_host_name")),
            Source::StringAttribute(63)
        );
        assert_eq!(source(&p("source.address")), Source::StringAttribute(24));
        assert_eq!(source(&p("response.code")), Source::IntAttribute(15));
        assert_eq!(source(&p("response.flags")), Source::IntAttribute(17));
        assert_eq!(
            source(&p("response.code_details")),
            Source::StringAttribute(16)
        );
        assert_eq!(source(&p("plugin_root_id")), Source::RootId);
    }

    #[test]
    fn a_plugin_property_is_filter_state_under_the_wasm_prefix() {
        assert_eq!(
            source(&p("gateway_identity")),
            Source::FilterState("wasm.gateway_identity".into())
        );
        assert_eq!(filter_state_key(&p("original_path")), "wasm.original_path");
    }

    #[test]
    fn an_unknown_attribute_is_never_read_from_filter_state() {
        assert_eq!(
            source(&p("connection.peer_certificate")),
            Source::PeerCertificate
        );
        assert_eq!(source(&p("connection.peer")), Source::Unsupported);
        assert_eq!(source(&p("request.headers")), Source::Unsupported);
        assert_eq!(source(&p("upstream.address")), Source::Unsupported);
    }

    #[test]
    fn integers_are_eight_little_endian_bytes() {
        assert_eq!(int_bytes(503), vec![0xf7, 0x01, 0, 0, 0, 0, 0, 0]);
    }
}
