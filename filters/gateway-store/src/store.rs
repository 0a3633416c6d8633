//! The Redis side: the seven commands this service sends (`SET`, `GET`,
//! `GETEX`, `GETDEL`, `DEL`, `PING`, and `EVAL` of one fixed
//! compare-and-delete script), each under the
//! request's deadline, on one multiplexed connection that is opened lazily and
//! re-opened by itself.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionInfo, ErrorKind, RedisError, RedisResult, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::api::StoreKey;
use crate::handoff;
use crate::stats::{bump, Stats};

/// How long a command may stay in flight after its request was answered:
/// the window in which a late claim is still seen and released. Every
/// command, the late ones included, ends within it.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Each connection attempt (TCP connect and `AUTH`) gives up after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A background `PING` this often notices a dead connection (Redis
/// restarted) and has it replaced before a request pays for it.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// Deletes a key only while it still holds this claim's id: a late claim is
/// released without ever touching a claim that someone else made after it
/// expired. Runs with the caller's ACL (`GET` and `DEL` on `gw:*`).
const COMPARE_AND_DELETE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Redis did not answer in time (or failed): the request is answered 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// A claim's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and is now held for the TTL: 201.
    Claimed,
    /// The key is already held: 409.
    Conflict,
}

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Address and credentials (RESP2, no `CLIENT SETINFO`, database 0).
    pub redis: ConnectionInfo,
    /// Redis commands in flight at once, late ones included; a request that
    /// cannot get a slot before its deadline is answered 503.
    pub max_in_flight: usize,
}

/// The Redis-backed store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    redis: RedisHandle,
    permits: Arc<Semaphore>,
    health: AtomicU8,
    /// The counters of `GET /stats`.
    pub stats: Stats,
}

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_UP: u8 = 1;
const HEALTH_DOWN: u8 = 2;

impl Store {
    /// Prepares the store without connecting: the first command (or the
    /// keep-alive) opens the connection, so the service starts and answers
    /// `/healthz` while Redis is down. Must run inside a Tokio runtime.
    pub fn new(config: StoreConfig) -> Result<Self, String> {
        let client = Client::open(config.redis).map_err(|e| format!("redis: {e}"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(4);
        Ok(Self {
            redis: RedisHandle::new(client, manager_config).map_err(|e| format!("redis: {e}"))?,
            permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            health: AtomicU8::new(HEALTH_UNKNOWN),
            stats: Stats::default(),
        })
    }

    /// Claims `key` once: `SET key <random id> NX PX ttl_ms`.
    ///
    /// A claim that Redis grants after the deadline (the request was answered
    /// 503), or whose outcome is unknown (the connection broke or the
    /// response timed out after the command was sent), is released again with
    /// a compare-and-delete on its random id, so a request refused with 503
    /// never consumes a one-time token or nonce.
    pub async fn claim(
        self: &Arc<Self>,
        key: StoreKey,
        ttl_ms: u64,
        deadline: Instant,
    ) -> Result<Claim, Unavailable> {
        bump(&self.stats.claims);
        let claim_id = random_claim_id().ok_or(Unavailable)?;
        let permit = self.permit(deadline).await?;
        let (reply, waiter) = handoff::pair::<Result<Claim, Unavailable>>();
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let _permit = permit;
            let (generation, mut conn) = store.redis.get();
            // Bounded by the request's deadline: while Redis is away the
            // connection manager holds a command until it has reconnected
            // (seconds later), and a SET sent then would be granted to a
            // request that was answered 503 long before. Its release would
            // then race the client's retry, which could read the key as
            // taken: a one-time token refused as replayed for a claim that
            // never succeeded. Dropped at the deadline, a command still
            // waiting for the connection is never sent; one already sent
            // has an unknown outcome (released below).
            let sent = tokio::time::timeout_at(
                deadline,
                redis::cmd("SET")
                    .arg(key.as_str())
                    .arg(&claim_id)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<Value>(&mut conn),
            )
            .await;
            let (answer, maybe_held) = match &sent {
                Err(_elapsed) => (Err(Unavailable), true),
                Ok(result) => {
                    store.observe(generation, result.as_ref().map(|_| ()));
                    match result {
                        Ok(Value::Okay) => (Ok(Claim::Claimed), true),
                        Ok(Value::Nil) => (Ok(Claim::Conflict), false),
                        Ok(other) => {
                            eprintln!("gateway-store: unexpected reply to SET NX: {other:?}");
                            (Err(Unavailable), false)
                        }
                        Err(e) => (Err(Unavailable), outcome_unknown(e)),
                    }
                }
            };
            let answered_claimed = answer == Ok(Claim::Claimed);
            let delivered = reply.send(answer);
            if maybe_held && !(delivered && answered_claimed) {
                store.release(&mut conn, &key, &claim_id).await;
            }
        });
        waiter.wait(deadline).await.unwrap_or(Err(Unavailable))
    }

    /// Stores `value` under `key` for `ttl_ms`: `SET key value PX ttl_ms`.
    pub async fn session_put(
        self: &Arc<Self>,
        key: StoreKey,
        value: bytes::Bytes,
        ttl_ms: u64,
        deadline: Instant,
    ) -> Result<(), Unavailable> {
        self.run(deadline, move |mut conn| async move {
            redis::cmd("SET")
                .arg(key.as_str())
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// The bytes under `key`, if any: `GET key`.
    pub async fn session_get(
        self: &Arc<Self>,
        key: StoreKey,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, Unavailable> {
        self.run(deadline, move |mut conn| async move {
            redis::cmd("GET")
                .arg(key.as_str())
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await
    }

    /// The bytes under `key`, if any, and its expiry pushed to `idle_ms` from
    /// now, in one command: `GETEX key PX idle_ms` (Redis 6.2+). A missing
    /// key stays missing.
    pub async fn session_touch(
        self: &Arc<Self>,
        key: StoreKey,
        idle_ms: u64,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, Unavailable> {
        self.run(deadline, move |mut conn| async move {
            redis::cmd("GETEX")
                .arg(key.as_str())
                .arg("PX")
                .arg(idle_ms)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await
    }

    /// The bytes under `key`, if any, deleting it in the same command:
    /// `GETDEL key` (Redis 6.2+). Of several concurrent callers (on any
    /// replica) exactly one gets the value.
    ///
    /// If the answer misses the deadline the value is gone all the same (the
    /// request was answered 503): single-use state fails closed, the login
    /// it belonged to has to start again.
    pub async fn session_consume(
        self: &Arc<Self>,
        key: StoreKey,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, Unavailable> {
        self.run(deadline, move |mut conn| async move {
            redis::cmd("GETDEL")
                .arg(key.as_str())
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await
    }

    /// Deletes `key` (whether or not it exists): `DEL key`.
    pub async fn session_delete(
        self: &Arc<Self>,
        key: StoreKey,
        deadline: Instant,
    ) -> Result<(), Unavailable> {
        self.run(deadline, move |mut conn| async move {
            redis::cmd("DEL")
                .arg(key.as_str())
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// `PING` within the deadline.
    pub async fn ping(self: &Arc<Self>, deadline: Instant) -> Result<(), Unavailable> {
        self.run(deadline, |mut conn| async move {
            redis::cmd("PING").query_async::<()>(&mut conn).await
        })
        .await
    }

    /// Pings Redis every [`KEEPALIVE_INTERVAL`] forever: a connection that
    /// died while idle (Redis restarted) is noticed and replaced here rather
    /// than by the next claim, and the log says when Redis comes and goes.
    pub async fn keepalive(self: Arc<Self>) {
        let mut tick = tokio::time::interval(KEEPALIVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (generation, mut conn) = self.redis.get();
            let result = redis::cmd("PING").query_async::<()>(&mut conn).await;
            self.observe(generation, result.as_ref().map(|_| ()));
        }
    }

    /// Runs one command in its own task (holding an in-flight slot until the
    /// command ends) and waits for it until `deadline`.
    async fn run<T, F, Fut>(self: &Arc<Self>, deadline: Instant, op: F) -> Result<T, Unavailable>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
    {
        let permit = self.permit(deadline).await?;
        let (reply, waiter) = handoff::pair::<Option<T>>();
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let _permit = permit;
            let (generation, conn) = store.redis.get();
            let result = op(conn).await;
            store.observe(generation, result.as_ref().map(|_| ()));
            reply.send(result.ok());
        });
        match waiter.wait(deadline).await {
            Some(Some(value)) => Ok(value),
            _ => Err(Unavailable),
        }
    }

    async fn permit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Unavailable> {
        match tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Unavailable),
        }
    }

    /// Compare-and-delete of a claim nobody was told about. Counted in
    /// `late_released` when it removed the key.
    async fn release(&self, conn: &mut ConnectionManager, key: &StoreKey, claim_id: &str) {
        let result: RedisResult<i64> = redis::cmd("EVAL")
            .arg(COMPARE_AND_DELETE)
            .arg(1)
            .arg(key.as_str())
            .arg(claim_id)
            .query_async(conn)
            .await;
        match result {
            Ok(1) => bump(&self.stats.late_released),
            Ok(_) => {}
            // The key stays until its TTL: said loudly, it consumes a token.
            Err(e) => eprintln!("gateway-store: cannot release a late claim: {e}"),
        }
    }

    /// Logs when Redis becomes reachable or unreachable, and replaces the
    /// connection manager after an authentication failure (which the manager
    /// itself would not retry).
    fn observe(&self, generation: u64, result: Result<(), &RedisError>) {
        match result {
            Ok(()) => {
                if self.health.swap(HEALTH_UP, Ordering::Relaxed) != HEALTH_UP {
                    eprintln!("gateway-store: redis reachable");
                }
            }
            Err(e) => match e.kind() {
                // A reply about one command (e.g. NOPERM: the ACL line lacks
                // a command this service sends): Redis itself is up.
                ErrorKind::Server(_) | ErrorKind::Extension => {
                    eprintln!("gateway-store: redis refused a command: {e}");
                }
                kind => {
                    if kind == ErrorKind::AuthenticationFailed {
                        self.redis.renew(generation);
                    }
                    if self.health.swap(HEALTH_DOWN, Ordering::Relaxed) != HEALTH_DOWN {
                        eprintln!("gateway-store: redis unavailable: {e}");
                    }
                }
            },
        }
    }
}

/// Whether a command that failed with `e` may still have run: it was sent,
/// then the connection broke or the response timed out. A refused connection
/// or a server error reply means it did not.
fn outcome_unknown(e: &RedisError) -> bool {
    e.is_io_error() && !e.is_connection_refusal()
}

/// 128 random bits in hex: what a claim stores, so that only its own claim
/// is ever released.
fn random_claim_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut bytes) {
        eprintln!("gateway-store: no randomness for a claim id: {e}");
        return None;
    }
    Some(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            if let Some(&d) = DIGITS.get(usize::from(nibble)) {
                out.push(char::from(d));
            }
        }
    }
    out
}

/// The current connection manager, replaceable after an authentication
/// failure (a password rotated in Redis before the file here, a user
/// created after this service started).
struct RedisHandle {
    client: Client,
    config: ConnectionManagerConfig,
    current: Mutex<(u64, ConnectionManager)>,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle").finish_non_exhaustive()
    }
}

impl RedisHandle {
    fn new(client: Client, config: ConnectionManagerConfig) -> RedisResult<Self> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            client,
            config,
            current: Mutex::new((0, manager)),
        })
    }

    fn get(&self) -> (u64, ConnectionManager) {
        match self.current.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces generation `generation` (once, however many requests saw it
    /// fail) with a fresh lazy manager.
    fn renew(&self, generation: u64) {
        let mut guard = match self.current.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.0 != generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(manager) => {
                eprintln!("gateway-store: redis refused the credentials; will connect anew");
                *guard = (generation.wrapping_add(1), manager);
            }
            Err(e) => eprintln!("gateway-store: cannot renew the redis connection: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_ids_are_distinct_128_bit_hex() {
        let a = random_claim_id().unwrap();
        let b = random_claim_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn hex_encodes_lower_case() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn only_io_errors_after_sending_leave_the_outcome_unknown() {
        let refused: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        let reset: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into();
        let timed_out: RedisError =
            std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout").into();
        let client: RedisError = (ErrorKind::Client, "bad").into();
        assert!(!outcome_unknown(&refused));
        assert!(outcome_unknown(&reset));
        assert!(outcome_unknown(&timed_out));
        assert!(!outcome_unknown(&client));
    }
}
