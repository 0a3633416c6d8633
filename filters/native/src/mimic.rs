//! `bench_body_mimic` (bench/test only; crate::envelope::BENCH_FILTERS,
//! docs/performance.md "e2ee's fixed cost: what Envoy charges for it"): an
//! EXPERIMENT measuring what Envoy itself charges for the work e2ee asks of
//! it on an encrypted request, with no crypto and no proxy-wasm layer.
//! Straight on the dynamic-module callbacks, on EVERY request with a body,
//! it does what e2ee does to an encrypted one, with identity transforms:
//! * request headers: waits for the body (StopIteration, as the host
//!   answers for e2ee's block, which sets `allow_on_headers_stop_iteration`);
//! * request body: buffers until the end, then reads it (one copy), reads
//!   the identity replay-guard published (filter state), drains the body and
//!   appends the same bytes, sets `content-length` and removes
//!   `content-encoding` (e2ee's request edits);
//! * response headers: reads them (one copy) and the response's code
//!   details, sets `content-length` to its own value and a
//!   `content-encoding` (e2ee's response edits);
//! * response body: each chunk read, drained and appended again (e2ee's
//!   record-by-record re-encryption, without the records).
//!
//! On the plain order the bench sends, its +CPU over e2ee passing that
//! request untouched is Envoy's share of e2ee's fixed cost.

use crate::ffi::{envoy, FilterPtr};
use crate::host::{self, REQUEST_HEADERS};

const RESPONSE_HEADERS: u32 = 2;
/// `filter_core::identity::PROPERTY` (a filter-state key).
const IDENTITY: &[&[u8]] = &[b"gateway_identity"];
const CODE_DETAILS: &[&[u8]] = &[b"response", b"code_details"];

pub fn request_headers(eos: bool) -> u32 {
    if eos {
        host::CONTINUE
    } else {
        host::STOP_ITERATION
    }
}

pub fn request_body(f: FilterPtr, eos: bool) -> u32 {
    if !eos {
        return host::BODY_STOP_AND_BUFFER;
    }
    let body = host::body_in(f, true, true);
    let identity = host::property(Some(f), "bench_body_mimic", false, IDENTITY);
    std::hint::black_box(&identity);
    // As e2ee's replacement: the whole body (read once more for its length).
    host::replace_body_in(f, true, true, &body);
    let len = body.len().to_string();
    envoy::set_header(f, REQUEST_HEADERS, b"content-length", Some(len.as_bytes()));
    envoy::set_header(f, REQUEST_HEADERS, b"content-encoding", None);
    host::CONTINUE
}

pub fn response_headers(f: FilterPtr) -> u32 {
    let headers = envoy::headers(f, RESPONSE_HEADERS);
    let details = host::property(Some(f), "bench_body_mimic", false, CODE_DETAILS);
    std::hint::black_box(&details);
    if let Some((_, v)) = headers.iter().find(|(k, _)| k == b"content-length") {
        let v = v.clone();
        envoy::set_header(f, RESPONSE_HEADERS, b"content-length", Some(&v));
    }
    envoy::set_header(f, RESPONSE_HEADERS, b"content-encoding", Some(b"identity"));
    host::CONTINUE
}

pub fn response_body(f: FilterPtr) -> u32 {
    let chunk = host::body_in(f, false, true);
    host::replace_body_in(f, false, true, &chunk);
    host::CONTINUE
}
