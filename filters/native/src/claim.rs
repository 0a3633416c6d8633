//! `bench_claim_direct` (bench/test only; crate::envelope::BENCH_FILTERS,
//! docs/performance.md "The claim without Envoy's HTTP client"): an
//! EXPERIMENT measuring the alternative to the shared-store claim's callout.
//! Today a once-only claim (a one-time `jti`, a signature nonce) is one
//! `dispatch_http_call` through Envoy's async HTTP client to the
//! gateway-store sidecar, which runs `SET gw:<ns>:<key> <id> NX PX <ttl>` in
//! Redis. This filter runs the same command on a connection the MODULE
//! owns: each request's claim goes over a channel to one I/O thread per
//! Redis URL (a blocking `redis` connection; the claims waiting are sent as
//! one pipeline), whose answer wakes the stream through its Envoy scheduler.
//! The request waits (StopAllIteration) until then; 201-like "claimed"
//! continues it, "claimed before" answers 409 `replayed`, anything else
//! 503 `replay_check_unavailable` (fail closed). Every request claims a
//! fresh key (a process-unique counter): what is measured is the path, not
//! a filter's logic.
//!
//! Configuration (the block's `config` string, JSON):
//! `{"redis_url": "redis://USER:PASSWORD@127.0.0.1:16379/", "ttl_ms": N,
//! "timeout_ms": N}` (a pipeline not answered within `timeout_ms`, 100 by
//! default as the sidecar's claim, answers its streams 503 and reconnects).
//!
//! Lifetimes: a waiting stream's scheduler is in [`PENDING`]; the I/O thread
//! commits to it only under that table's lock and only while the entry (the
//! same stream AND the same claim number) is there; the stream's scheduled
//! hook or its destruction removes the entry and deletes the scheduler
//! under the same lock, so no commit ever reaches a deleted scheduler.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::ffi::{envoy, FilterPtr, StreamSchedulerPtr};
use crate::host::{self, Config};

/// The block's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub redis_url: String,
    #[serde(default = "default_ttl")]
    pub ttl_ms: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_timeout() -> u64 {
    100
}

fn default_ttl() -> u64 {
    60_000
}

/// At most this many claims in one pipeline.
const MAX_BATCH: usize = 256;

/// The answer of one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Claimed,
    Replayed,
    Unavailable,
}

struct Entry {
    claim: u64,
    sched: StreamSchedulerPtr,
    answer: Option<Answer>,
}

struct Job {
    filter: FilterPtr,
    claim: u64,
    ttl_ms: u64,
}

/// Waiting streams, by stream.
static PENDING: OnceLock<Mutex<HashMap<FilterPtr, Entry>>> = OnceLock::new();
/// One I/O thread per Redis URL.
static CLIENTS: OnceLock<Mutex<HashMap<String, Sender<Job>>>> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &'static OnceLock<Mutex<T>>, init: fn() -> T) -> MutexGuard<'static, T> {
    let m = m.get_or_init(|| Mutex::new(init()));
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn pending() -> MutexGuard<'static, HashMap<FilterPtr, Entry>> {
    lock(&PENDING, HashMap::new)
}

/// Parses the block's configuration; the error names the problem.
pub fn load(config: &[u8]) -> Result<Settings, String> {
    let s: Settings = serde_json::from_slice(config)
        .map_err(|e| format!("bench_claim_direct: invalid config: {e}"))?;
    if !s.redis_url.starts_with("redis://") {
        return Err("bench_claim_direct: invalid config at `redis_url`: expected redis://…".into());
    }
    if s.timeout_ms == 0 {
        return Err("bench_claim_direct: invalid config at `timeout_ms`: must be > 0".into());
    }
    if s.ttl_ms == 0 {
        return Err("bench_claim_direct: invalid config at `ttl_ms`: must be > 0".into());
    }
    Ok(s)
}

/// Main thread, inside `config_new`: `false` refuses the block (logged).
pub fn configure(c: &Config) -> bool {
    match load(&c.envelope().config) {
        Ok(_) => true,
        Err(e) => {
            host::log(4, e.as_bytes());
            false
        }
    }
}

/// What a worker's streams of one configuration need: the claims' TTL and
/// the channel to its URL's I/O thread.
struct Worker {
    ttl_ms: u64,
    tx: Sender<Job>,
}

/// Configuration address → (configuration, this worker's view of it).
type WorkersByConfig = HashMap<usize, (Weak<Config>, Rc<Worker>)>;

/// This worker's view of a configuration (by its address): parsed, and its
/// I/O thread found or started, once per worker; the streams then touch no
/// process-wide table but the pending one.
fn worker(c: &Arc<Config>) -> Option<Rc<Worker>> {
    thread_local! {
        static WORKERS: RefCell<WorkersByConfig> = RefCell::new(HashMap::new());
    }
    let key = Arc::as_ptr(c) as usize;
    WORKERS.with(|m| {
        let mut m = m.borrow_mut();
        if let Some((w, s)) = m.get(&key) {
            if w.strong_count() > 0 {
                return Some(s.clone());
            }
        }
        let settings = load(&c.envelope().config).ok()?;
        let tx = lock(&CLIENTS, HashMap::new)
            .entry(settings.redis_url.clone())
            .or_insert_with(|| spawn(settings.redis_url.clone(), settings.timeout_ms))
            .clone();
        let s = Rc::new(Worker {
            ttl_ms: settings.ttl_ms,
            tx,
        });
        m.retain(|_, (w, _)| w.strong_count() > 0);
        m.insert(key, (Arc::downgrade(c), s.clone()));
        Some(s)
    })
}

/// The request headers hook: queue the claim and wait for its answer.
pub fn request_headers(c: &Arc<Config>, f: FilterPtr) -> u32 {
    let Some(worker) = worker(c) else {
        return refuse(f);
    };
    let Some(sched) = envoy::stream_scheduler_new(f) else {
        return refuse(f);
    };
    let claim = NEXT.fetch_add(1, Ordering::Relaxed);
    pending().insert(
        f,
        Entry {
            claim,
            sched,
            answer: None,
        },
    );
    let job = Job {
        filter: f,
        claim,
        ttl_ms: worker.ttl_ms,
    };
    if worker.tx.send(job).is_err() {
        // The I/O thread is gone: answer now.
        if let Some(e) = pending().remove(&f) {
            envoy::stream_scheduler_delete(e.sched);
        }
        return unavailable(f);
    }
    host::STOP_ALL
}

/// The stream's scheduler event: the claim's answer is in.
pub fn scheduled(f: FilterPtr) {
    let Some(e) = pending().remove(&f) else {
        return;
    };
    envoy::stream_scheduler_delete(e.sched);
    match e.answer {
        Some(Answer::Claimed) => envoy::continue_decoding(f),
        Some(Answer::Replayed) => {
            reply(f, 409, "replayed", "this request was seen before");
        }
        Some(Answer::Unavailable) | None => {
            unavailable(f);
        }
    }
}

/// The stream is destroyed (possibly while waiting).
pub fn destroy(f: FilterPtr) {
    if let Some(e) = pending().remove(&f) {
        envoy::stream_scheduler_delete(e.sched);
    }
}

fn refuse(f: FilterPtr) -> u32 {
    host::send_failure(f, "bench_claim_direct");
    host::STOP_ITERATION
}

fn unavailable(f: FilterPtr) -> u32 {
    reply(
        f,
        503,
        "replay_check_unavailable",
        "the replay check cannot be made now; retry later",
    )
}

fn reply(f: FilterPtr, status: u32, code: &str, message: &str) -> u32 {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    envoy::send_response(
        f,
        status,
        &[(b"content-type".to_vec(), b"application/json".to_vec())],
        body.as_bytes(),
        b"bench_claim_direct",
    );
    host::STOP_ITERATION
}

fn spawn(url: String, timeout_ms: u64) -> Sender<Job> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("claim-direct".into())
        .spawn(move || io_thread(&url, Duration::from_millis(timeout_ms), &rx));
    if let Err(e) = spawned {
        host::log(
            4,
            format!("bench_claim_direct: no I/O thread: {e}").as_bytes(),
        );
    }
    tx
}

/// One Redis connection; each wake-up sends every waiting claim as one
/// pipeline and answers each stream.
fn io_thread(url: &str, timeout: Duration, rx: &Receiver<Job>) {
    let client = match redis::Client::open(url) {
        Ok(c) => Some(c),
        Err(e) => {
            host::log(4, format!("bench_claim_direct: redis_url: {e}").as_bytes());
            None
        }
    };
    let mut con: Option<redis::Connection> = None;
    // Keys unique to this process: its start time and the claim number.
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let pid = std::process::id();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if con.is_none() {
            con = client
                .as_ref()
                .and_then(|c| c.get_connection_with_timeout(timeout).ok())
                .filter(|c| {
                    c.set_read_timeout(Some(timeout)).is_ok()
                        && c.set_write_timeout(Some(timeout)).is_ok()
                });
        }
        let answers: Vec<Answer> = match con.as_mut() {
            None => vec![Answer::Unavailable; batch.len()],
            Some(c) => {
                let mut p = redis::pipe();
                for j in &batch {
                    p.cmd("SET")
                        .arg(format!("gw:bench.claim:{pid:x}-{epoch:x}-{:x}", j.claim))
                        .arg(j.claim)
                        .arg("NX")
                        .arg("PX")
                        .arg(j.ttl_ms);
                }
                match p.query::<Vec<Option<String>>>(c) {
                    Ok(rs) if rs.len() == batch.len() => rs
                        .into_iter()
                        .map(|r| match r {
                            Some(_) => Answer::Claimed,
                            None => Answer::Replayed,
                        })
                        .collect(),
                    _ => {
                        con = None;
                        vec![Answer::Unavailable; batch.len()]
                    }
                }
            }
        };
        let mut g = pending();
        for (j, a) in batch.iter().zip(answers) {
            if let Some(e) = g.get_mut(&j.filter) {
                if e.claim == j.claim {
                    e.answer = Some(a);
                    envoy::stream_scheduler_commit(e.sched, 1);
                }
            }
        }
    }
}
