//! gateway-store against a REAL `redis-server` (spawned here on a free
//! loopback port, with a temporary config: a `default` password and the
//! store's narrow ACL user) and the real `gateway-store` binary. Everything
//! started here is killed when its guard drops.
//!
//! Needs `redis-server` and `redis-cli` on PATH (Debian: `redis-server`).
//! The latency/RSS/CPU measurement is `#[ignore]`d; run it with
//! `cargo test --release -p gateway-store --test redis -- --ignored --nocapture`.

// Helpers below are test code too (clippy.toml only covers #[test] fns).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The ACL line the docs give the integrator, with the test's password.
fn acl_line(password: &str) -> String {
    format!(
        "user gateway-store on >{password} ~gw:* resetchannels -@all +set +get +getex +getdel +del +ping +eval"
    )
}

const DEFAULT_PASSWORD: &str = "test-default-password";
const STORE_PASSWORD: &str = "test-store-password";

// ---------------------------------------------------------------- helpers

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "gateway-store-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nobody listens on right now (never the stack's 16379).
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port != 16379 {
            return port;
        }
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
fn poll_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real redis-server with the store's ACL user. Killed on drop.
struct Redis {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Self {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Self {
        let dir = TempDir::new();
        let conf = dir.0.join("redis.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode yes\ndaemonize no\n\
                 save \"\"\nappendonly no\ndir {dir}\nlogfile {dir}/redis.log\n\
                 user default on >{DEFAULT_PASSWORD} ~* &* +@all\n{acl}\n",
                dir = dir.0.display(),
                acl = acl_line(STORE_PASSWORD),
            ),
        )
        .unwrap();
        let mut redis = Self {
            port,
            dir,
            child: None,
        };
        redis.resume();
        redis
    }

    /// Starts (again) on the same port and waits until it answers.
    fn resume(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .arg(self.dir.0.join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        self.child = Some(child);
        poll_until(Duration::from_secs(10), "redis-server to answer", || {
            self.cli_as("default", DEFAULT_PASSWORD, &["PING"]) == "PONG"
        });
    }

    /// Kills it (abruptly, like a crash) and waits until it is gone.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis-cli` as `user` (password through the environment, not argv);
    /// trimmed output (an error reply included).
    fn cli_as(&self, user: &str, password: &str, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "--user",
                user,
            ])
            .args(args)
            .env("REDISCLI_AUTH", password)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (Debian package redis-tools)");
        let mut text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        text.push_str(String::from_utf8_lossy(&out.stderr).trim());
        text
    }

    fn admin(&self, args: &[&str]) -> String {
        self.cli_as("default", DEFAULT_PASSWORD, args)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The real gateway-store binary. Killed on drop.
struct Store {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Store {
    /// Starts it against `redis_url` and waits for its ready line.
    fn start(redis_url: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new();
        let password_file = dir.0.join("redis-password");
        std::fs::write(&password_file, format!("{STORE_PASSWORD}\n")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway-store"))
            .args(["--listen", "127.0.0.1:0", "--redis-url", redis_url])
            .args(["--redis-user", "gateway-store", "--redis-password-file"])
            .arg(&password_file)
            .args(["--namespace", "web.jwt", "--namespace", "app.replay-guard"])
            .args(["--namespace", "internal.oidc", "--max-ttl-ms", "600000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so that the child never blocks on stdout.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gateway-store printed no ready line")
            .expect("gateway-store exited before its ready line")
            .unwrap();
        let addr = line
            .strip_prefix("gateway-store ready on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    fn client(&self) -> Http {
        Http::connect(self.addr)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 keep-alive client on a std TcpStream.
struct Http {
    reader: BufReader<TcpStream>,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    elapsed: Duration,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Http {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let started = Instant::now();
        // One write: a server that answers before reading the body (413)
        // then finds nothing unread and closes cleanly.
        self.reader.get_mut().write_all(&request).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap();
            }
            headers.push((name, value));
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        Resp {
            status,
            headers,
            body,
            elapsed: started.elapsed(),
        }
    }

    fn claim(&mut self, ns: &str, key: &str, ttl_ms: u64) -> Resp {
        self.send(
            "POST",
            &format!("/v1/claim/{ns}/{key}?ttl_ms={ttl_ms}"),
            &[],
            b"",
        )
    }

    fn stats(&mut self) -> serde_json::Value {
        self.send("GET", "/stats", &[], b"").json()
    }
}

/// A distinct 64-hex key per call (the filters send a SHA-256).
fn key() -> String {
    static N: AtomicU32 = AtomicU32::new(1);
    // Always one hex letter (the `a`), so that the upper-case variant of a
    // key is a different, invalid key whatever the process id is (a pid
    // whose hex form is all digits made that case flaky).
    format!(
        "{:031x}a{:032x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ------------------------------------------------------------------ tests

#[test]
fn a_key_is_claimed_once_then_conflicts_until_its_ttl_expires() {
    let redis = Redis::start();
    let store = Store::start(&redis.url(), &[]);
    let mut http = store.client();

    let k = key();
    let first = http.claim("web.jwt", &k, 60_000);
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.json(), serde_json::json!({"claimed": true}));
    let again = http.claim("web.jwt", &k, 60_000);
    assert_eq!(again.status, 409);
    assert_eq!(again.json(), serde_json::json!({"claimed": false}));
    // The same hash in another namespace is another key.
    assert_eq!(http.claim("app.replay-guard", &k, 60_000).status, 201);

    // In Redis: the namespaced key, holding a random claim id (not the key),
    // with the TTL asked for.
    let stored = redis.admin(&["GET", &format!("gw:web.jwt:{k}")]);
    assert_eq!(stored.len(), 32, "{stored}");
    assert!(!stored.contains(&k));
    let pttl: i64 = redis
        .admin(&["PTTL", &format!("gw:web.jwt:{k}")])
        .parse()
        .unwrap();
    assert!((50_000..=60_000).contains(&pttl), "{pttl}");

    // A short TTL: refused while it lives, claimable again once it expired.
    let short = key();
    let claimed_at = Instant::now();
    assert_eq!(http.claim("web.jwt", &short, 300).status, 201);
    assert_eq!(http.claim("web.jwt", &short, 300).status, 409);
    poll_until(Duration::from_secs(5), "the short claim to expire", || {
        http.claim("web.jwt", &short, 300).status == 201
    });
    assert!(claimed_at.elapsed() >= Duration::from_millis(250));

    let stats = http.stats();
    assert_eq!(stats["claimed"], 4);
    assert!(stats["conflicts"].as_u64().unwrap() >= 2);
    assert_eq!(stats["unavailable"], 0);
}

#[test]
fn requests_outside_the_api_are_refused_and_never_reach_redis() {
    let redis = Redis::start();
    let store = Store::start(&redis.url(), &["--max-value-bytes", "16"]);
    let mut http = store.client();
    let k = key();
    let cases: Vec<(&str, String, &[u8], u16, &str)> = vec![
        (
            "POST",
            format!("/v1/claim/unknown.ns/{k}?ttl_ms=1000"),
            b"",
            404,
            "unknown_namespace",
        ),
        (
            "POST",
            format!("/v1/claim/web.jwt/{}?ttl_ms=1000", k.to_uppercase()),
            b"",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/claim/web.jwt/eyJhbGciOiJSUzI1NiJ9?ttl_ms=1000".into(),
            b"",
            400,
            "bad_request",
        ),
        (
            "POST",
            format!("/v1/claim/web.jwt/{k}?ttl_ms=0"),
            b"",
            400,
            "bad_request",
        ),
        (
            "POST",
            format!("/v1/claim/web.jwt/{k}?ttl_ms=600001"),
            b"",
            400,
            "bad_request",
        ),
        (
            "POST",
            format!("/v1/claim/web.jwt/{k}"),
            b"",
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("/v1/claim/web.jwt/{k}?ttl_ms=1000"),
            b"",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            format!("/v1/claim/web.jwt/{k}/x?ttl_ms=1000"),
            b"",
            404,
            "not_found",
        ),
        ("POST", "/v1/flushall".into(), b"", 404, "not_found"),
        ("GET", "/".into(), b"", 404, "not_found"),
        (
            "PUT",
            format!("/v1/session/web.jwt/{k}?ttl_ms=1000"),
            b"0123456789abcdefX",
            413,
            "payload_too_large",
        ),
        (
            "PATCH",
            format!("/v1/session/web.jwt/{k}"),
            b"",
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            format!("/v1/session/web.jwt/{k}?idle_ms=1000&consume=1"),
            b"",
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("/v1/session/web.jwt/{k}?idle_ms=600001"),
            b"",
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("/v1/session/web.jwt/{k}?consume=yes"),
            b"",
            400,
            "bad_request",
        ),
    ];
    for (method, target, body, status, code) in &cases {
        // A fresh connection each: a refusal may close it (413 does).
        let resp = store.client().send(method, target, &[], body);
        assert_eq!(resp.status, *status, "{method} {target}: {resp:?}");
        assert_eq!(resp.json()["error"], *code, "{method} {target}");
    }
    let stats = http.stats();
    assert_eq!(stats["bad_requests"], cases.len());
    assert_eq!(stats["claims"], 0);
    // Redis saw no write and holds nothing.
    assert_eq!(redis.admin(&["DBSIZE"]), "0");
    let commandstats = redis.admin(&["INFO", "commandstats"]);
    for cmd in [
        "cmdstat_set:",
        "cmdstat_get:",
        "cmdstat_getex:",
        "cmdstat_getdel:",
        "cmdstat_del:",
        "cmdstat_eval:",
    ] {
        assert!(!commandstats.contains(cmd), "{cmd} in {commandstats}");
    }
}

#[test]
fn sessions_are_stored_read_and_deleted() {
    let redis = Redis::start();
    let store = Store::start(&redis.url(), &[]);
    let mut http = store.client();
    let k = key();
    let path = format!("/v1/session/internal.oidc/{k}");
    let value: &[u8] = b"{\"sub\":\"alice\"}\x00\xff binary too";

    assert_eq!(http.send("GET", &path, &[], b"").status, 404);
    let put = http.send("PUT", &format!("{path}?ttl_ms=60000"), &[], value);
    assert_eq!(put.status, 204, "{put:?}");
    let got = http.send("GET", &path, &[], b"");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, value);
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    let pttl: i64 = redis
        .admin(&["PTTL", &format!("gw:internal.oidc:{k}")])
        .parse()
        .unwrap();
    assert!((50_000..=60_000).contains(&pttl), "{pttl}");

    // Overwrite, then delete (twice: deleting nothing is fine too).
    assert_eq!(
        http.send("PUT", &format!("{path}?ttl_ms=60000"), &[], b"v2")
            .status,
        204
    );
    assert_eq!(http.send("GET", &path, &[], b"").body, b"v2");
    assert_eq!(http.send("DELETE", &path, &[], b"").status, 204);
    assert_eq!(http.send("GET", &path, &[], b"").status, 404);
    assert_eq!(http.send("DELETE", &path, &[], b"").status, 204);

    // A session expires with its TTL.
    assert_eq!(
        http.send("PUT", &format!("{path}?ttl_ms=200"), &[], b"short")
            .status,
        204
    );
    poll_until(Duration::from_secs(5), "the session to expire", || {
        http.send("GET", &path, &[], b"").status == 404
    });

    let stats = http.stats();
    assert_eq!(stats["session_set"], 3);
    assert_eq!(stats["session_delete"], 2);
    assert!(stats["session_get"].as_u64().unwrap() >= 5);
    assert_eq!(
        redis.admin(&["ACL", "LOG"]),
        "",
        "a command outside the ACL"
    );
}

#[test]
fn a_session_read_with_idle_ms_pushes_its_expiry_and_a_consumed_one_is_gone() {
    let redis = Redis::start();
    let store = Store::start(&redis.url(), &[]);
    let mut http = store.client();
    let k = key();
    let path = format!("/v1/session/internal.oidc/{k}");
    let redis_key = format!("gw:internal.oidc:{k}");
    let pttl = |redis: &Redis| -> i64 { redis.admin(&["PTTL", &redis_key]).parse().unwrap() };

    // idle_ms on nothing: 404, and nothing is created.
    assert_eq!(
        http.send("GET", &format!("{path}?idle_ms=60000"), &[], b"")
            .status,
        404
    );
    assert_eq!(redis.admin(&["DBSIZE"]), "0");

    // A short session read with idle_ms: the value, and the expiry moved out.
    let put = http.send("PUT", &format!("{path}?ttl_ms=5000"), &[], b"session");
    assert_eq!(put.status, 204);
    assert!(pttl(&redis) <= 5000);
    let got = http.send("GET", &format!("{path}?idle_ms=600000"), &[], b"");
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body, b"session");
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    assert!(
        (590_000..=600_000).contains(&pttl(&redis)),
        "{}",
        pttl(&redis)
    );
    // ...and shortened again too: idle_ms sets the expiry, it does not add.
    assert_eq!(
        http.send("GET", &format!("{path}?idle_ms=300"), &[], b"")
            .status,
        200
    );
    assert!(pttl(&redis) <= 300);
    poll_until(Duration::from_secs(5), "the idle session to expire", || {
        http.send("GET", &path, &[], b"").status == 404
    });

    // consume=1: the value once, then 404; the key is gone from Redis.
    let login = key();
    let login_path = format!("/v1/session/internal.oidc/{login}");
    assert_eq!(
        http.send("PUT", &format!("{login_path}?ttl_ms=60000"), &[], b"state")
            .status,
        204
    );
    let first = http.send("GET", &format!("{login_path}?consume=1"), &[], b"");
    assert_eq!((first.status, first.body.as_slice()), (200, &b"state"[..]));
    let second = http.send("GET", &format!("{login_path}?consume=1"), &[], b"");
    assert_eq!(second.status, 404);
    assert_eq!(second.json()["error"], "no_session");
    assert_eq!(http.send("GET", &login_path, &[], b"").status, 404);
    assert_eq!(redis.admin(&["DBSIZE"]), "0");

    let stats = http.stats();
    assert_eq!(stats["session_touch"], 3);
    assert_eq!(stats["session_consume"], 2);
    assert_eq!(stats["unavailable"], 0);
    let commandstats = redis.admin(&["INFO", "commandstats"]);
    assert!(
        commandstats.contains("cmdstat_getex:calls=3"),
        "{commandstats}"
    );
    assert!(
        commandstats.contains("cmdstat_getdel:calls=2"),
        "{commandstats}"
    );
    assert_eq!(
        redis.admin(&["ACL", "LOG"]),
        "",
        "a command outside the ACL"
    );
}

#[test]
fn a_consumed_value_is_handed_out_once_across_two_stores() {
    // Two stores on one Redis, as the two replicas' sidecars: readers racing
    // on both get the value exactly once between them.
    let redis = Redis::start();
    let stores = [
        Store::start(&redis.url(), &[]),
        Store::start(&redis.url(), &[]),
    ];
    const READERS: usize = 8;
    for round in 0..20 {
        let k = key();
        let path = format!("/v1/session/internal.oidc/{k}");
        let value = format!("login-{round}");
        let put = stores[0].client().send(
            "PUT",
            &format!("{path}?ttl_ms=60000"),
            &[],
            value.as_bytes(),
        );
        assert_eq!(put.status, 204);
        let mut clients: Vec<Http> = (0..READERS).map(|i| stores[i % 2].client()).collect();
        let barrier = std::sync::Barrier::new(READERS);
        let target = format!("{path}?consume=1");
        let answers: Vec<(u16, Vec<u8>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = clients
                .iter_mut()
                .map(|client| {
                    let (barrier, target) = (&barrier, &target);
                    scope.spawn(move || {
                        barrier.wait();
                        let resp = client.send("GET", target, &[], b"");
                        (resp.status, resp.body)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<_> = answers.iter().filter(|(s, _)| *s == 200).collect();
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}");
        assert_eq!(winners[0].1, value.as_bytes());
        assert_eq!(
            answers.iter().filter(|(s, _)| *s == 404).count(),
            READERS - 1,
            "round {round}: {answers:?}"
        );
    }
    assert_eq!(redis.admin(&["DBSIZE"]), "0");
}

#[test]
fn the_acl_user_can_run_nothing_but_the_stores_commands() {
    let redis = Redis::start();
    let store_user = |args: &[&str]| redis.cli_as("gateway-store", STORE_PASSWORD, args);
    // What the store sends works...
    assert_eq!(store_user(&["PING"]), "PONG");
    assert_eq!(
        store_user(&["SET", "gw:web.jwt:x", "1", "NX", "PX", "1000"]),
        "OK"
    );
    assert_eq!(store_user(&["GETEX", "gw:web.jwt:x", "PX", "100000"]), "1");
    assert_eq!(store_user(&["GETDEL", "gw:web.jwt:y"]), "");
    // ...anything else is refused, keys outside gw:* included.
    for args in [
        &["FLUSHALL"][..],
        &["FLUSHDB"],
        &["KEYS", "*"],
        &["SCAN", "0"],
        &["CONFIG", "GET", "*"],
        &["CONFIG", "SET", "appendonly", "no"],
        &["ACL", "LIST"],
        &["CLIENT", "LIST"],
        &["CLIENT", "PAUSE", "1000"],
        &["SHUTDOWN", "NOSAVE"],
        &["MONITOR"],
        &["SUBSCRIBE", "x"],
        &["EXPIRE", "gw:web.jwt:x", "100000"],
        &["SET", "other", "1"],
        &["GET", "session:abc"],
        &["GETEX", "session:abc", "PERSIST"],
        &["GETDEL", "session:abc"],
        &["PERSIST", "gw:web.jwt:x"],
        &["DEL", "other"],
        // A script runs with its caller's ACL: no way round it.
        &["EVAL", "return redis.call('FLUSHALL')", "0"],
        &[
            "EVAL",
            "return redis.call('SET', KEYS[1], '1')",
            "1",
            "other",
        ],
    ] {
        let out = store_user(args);
        // Redis 7.0 words a refusal inside a script differently.
        let refused = out.contains("NOPERM")
            || out.contains("no permissions")
            || out.contains("The user executing the script can't");
        assert!(refused, "{args:?} as gateway-store: {out:?}");
    }
    // The key set above is still there: nothing was flushed.
    assert_eq!(redis.admin(&["DBSIZE"]), "1");
}

#[test]
fn a_claim_while_redis_is_paused_is_503_in_time_and_does_not_stick() {
    let redis = Redis::start();
    let store = Store::start(&redis.url(), &["--timeout-ms", "300"]);
    let mut http = store.client();
    // The connection exists before the pause.
    assert_eq!(http.claim("web.jwt", &key(), 1000).status, 201);

    assert_eq!(redis.admin(&["CLIENT", "PAUSE", "1500", "ALL"]), "OK");
    let paused_at = Instant::now();
    let (a, b) = (key(), key());
    let first = http.claim("app.replay-guard", &a, 60_000);
    assert_eq!(first.status, 503, "{first:?}");
    assert_eq!(first.json()["error"], "store_unavailable");
    assert!(
        first.elapsed >= Duration::from_millis(290) && first.elapsed < Duration::from_millis(600),
        "answered after {:?}, deadline 300 ms",
        first.elapsed
    );
    // x-deadline-ms shortens the wait (never lengthens it).
    let second = http.send(
        "POST",
        &format!("/v1/claim/app.replay-guard/{b}?ttl_ms=60000"),
        &[("x-deadline-ms", "40")],
        b"",
    );
    assert_eq!(second.status, 503);
    assert!(
        second.elapsed < Duration::from_millis(290),
        "{:?}",
        second.elapsed
    );
    // /healthz answers 503 within the deadline too; /stats needs no Redis.
    let health = http.send("GET", "/healthz", &[("x-deadline-ms", "50")], b"");
    assert_eq!(health.status, 503);
    assert_eq!(health.json(), serde_json::json!({"redis": "unavailable"}));
    assert!(
        paused_at.elapsed() < Duration::from_millis(1500),
        "test too slow for the pause"
    );

    // After the pause Redis runs both SETs (OK): the store releases both.
    poll_until(Duration::from_secs(10), "two late releases", || {
        http.stats()["late_released"] == 2
    });
    assert_eq!(
        redis.admin(&["EXISTS", &format!("gw:app.replay-guard:{a}")]),
        "0"
    );
    assert_eq!(
        redis.admin(&["EXISTS", &format!("gw:app.replay-guard:{b}")]),
        "0"
    );
    // The refused requests consumed nothing: the same keys claim now.
    assert_eq!(http.claim("app.replay-guard", &a, 60_000).status, 201);
    assert_eq!(http.claim("app.replay-guard", &b, 60_000).status, 201);
    let stats = http.stats();
    assert_eq!(stats["unavailable"], 2);
    assert_eq!(stats["claimed"], 3);
    // Every command the store sent (AUTH, SET, EVAL, PING) was within its
    // ACL: Redis logged no denial.
    assert_eq!(redis.admin(&["ACL", "LOG"]), "");
}

#[test]
fn redis_down_is_503_and_claims_resume_when_it_returns_without_a_restart() {
    let mut redis = Redis::start();
    let store = Store::start(&redis.url(), &[]);
    let mut http = store.client();
    assert_eq!(http.claim("web.jwt", &key(), 60_000).status, 201);
    assert_eq!(http.send("GET", "/healthz", &[], b"").status, 200);

    redis.stop();
    for _ in 0..3 {
        let resp = http.claim("web.jwt", &key(), 60_000);
        assert_eq!(resp.status, 503, "{resp:?}");
        assert_eq!(resp.json()["error"], "store_unavailable");
        assert_eq!(resp.header("retry-after"), Some("1"));
        assert!(
            resp.elapsed < Duration::from_millis(500),
            "{:?}",
            resp.elapsed
        );
    }
    let health = http.send("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 503);
    assert_eq!(health.json(), serde_json::json!({"redis": "unavailable"}));
    let put = http.send(
        "PUT",
        &format!("/v1/session/internal.oidc/{}?ttl_ms=1000", key()),
        &[],
        b"x",
    );
    assert_eq!(put.status, 503);

    redis.resume();
    let k = key();
    poll_until(Duration::from_secs(10), "claims to work again", || {
        http.claim("web.jwt", &k, 60_000).status == 201
    });
    assert_eq!(http.claim("web.jwt", &k, 60_000).status, 409);
    assert_eq!(http.send("GET", "/healthz", &[], b"").status, 200);
    // The same process all along.
    assert!(store_is_running(&store));
}

#[test]
fn it_starts_and_serves_healthz_before_redis_exists() {
    let port = free_port();
    let store = Store::start(&format!("redis://127.0.0.1:{port}"), &[]);
    let mut http = store.client();
    assert_eq!(http.send("GET", "/healthz", &[], b"").status, 503);
    assert_eq!(http.claim("web.jwt", &key(), 1000).status, 503);

    let _redis = Redis::start_on(port);
    poll_until(Duration::from_secs(10), "/healthz to turn 200", || {
        http.send("GET", "/healthz", &[], b"").status == 200
    });
    assert_eq!(http.claim("web.jwt", &key(), 1000).status, 201);
}

#[test]
fn h2c_with_prior_knowledge_is_served() {
    let redis = Redis::start();
    let store = Store::start(&redis.url(), &[]);
    let addr = store.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use http_body_util::{BodyExt, Full};
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let k = key();
        for expected in [201u16, 409] {
            let req =
                hyper::Request::post(format!("http://{addr}/v1/claim/web.jwt/{k}?ttl_ms=60000"))
                    .body(Full::new(bytes::Bytes::new()))
                    .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), hyper::Version::HTTP_2);
            assert_eq!(resp.status().as_u16(), expected);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["claimed"], expected == 201);
        }
    });
}

#[test]
fn sigterm_stops_it_promptly() {
    let redis = Redis::start();
    let mut store = Store::start(&redis.url(), &[]);
    assert_eq!(store.client().send("GET", "/healthz", &[], b"").status, 200);
    let status = Command::new("kill")
        .args(["-TERM", &store.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    loop {
        if let Some(exit) = store.child.try_wait().unwrap() {
            assert!(exit.success(), "{exit:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "still running 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn store_is_running(store: &Store) -> bool {
    std::path::Path::new(&format!("/proc/{}", store.child.id())).exists()
}

// ----------------------------------------------------------- measurement

/// Resident memory (kB) and CPU time (user + system, clock ticks) of `pid`.
fn rss_kb_and_cpu_ticks(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the ")" of the command name: utime and stime are the
    // 12th and 13th of them.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, ticks)
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100)
}

#[test]
#[ignore = "measurement: cargo test --release -p gateway-store --test redis -- --ignored --nocapture"]
fn measure_claim_latency_rss_and_cpu() {
    const CLAIMS: usize = 5000;
    const THREADS: usize = 8;
    let redis = Redis::start();
    let store = Store::start(&redis.url(), &[]);
    let mut http = store.client();
    for _ in 0..200 {
        assert_eq!(http.claim("web.jwt", &key(), 60_000).status, 201);
    }
    let pid = store.child.id();
    let ticks_per_ms = clock_ticks_per_second() as f64 / 1000.0;

    // Sequential: one HTTP/1.1 keep-alive connection, one claim at a time.
    let (rss_before, ticks_before) = rss_kb_and_cpu_ticks(pid);
    let mut latencies = Vec::with_capacity(CLAIMS);
    let started = Instant::now();
    for _ in 0..CLAIMS {
        let resp = http.claim("web.jwt", &key(), 60_000);
        assert_eq!(resp.status, 201);
        latencies.push(resp.elapsed);
    }
    let wall = started.elapsed();
    let (rss_after, ticks_after) = rss_kb_and_cpu_ticks(pid);
    latencies.sort();
    let pct = |l: &[Duration], p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    let cpu_ms = (ticks_after - ticks_before) as f64 / ticks_per_ms;
    println!(
        "sequential: {CLAIMS} claims on one HTTP/1.1 keep-alive connection: \
         p50 {:?}, p99 {:?}, max {:?}, {:.0} claims/s; \
         gateway-store CPU {:.1} ms per 1000 claims; RSS {} kB before, {} kB after",
        pct(&latencies, 0.50),
        pct(&latencies, 0.99),
        latencies[latencies.len() - 1],
        CLAIMS as f64 / wall.as_secs_f64(),
        cpu_ms * 1000.0 / CLAIMS as f64,
        rss_before,
        rss_after,
    );

    // Concurrent: THREADS connections, CLAIMS claims each.
    let (_, ticks_before) = rss_kb_and_cpu_ticks(pid);
    let started = Instant::now();
    let addr = store.addr;
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut http = Http::connect(addr);
                let mut latencies = Vec::with_capacity(CLAIMS);
                for _ in 0..CLAIMS {
                    let resp = http.claim("web.jwt", &key(), 60_000);
                    assert_eq!(resp.status, 201);
                    latencies.push(resp.elapsed);
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let wall = started.elapsed();
    let (rss_after, ticks_after) = rss_kb_and_cpu_ticks(pid);
    latencies.sort();
    let total = THREADS * CLAIMS;
    let cpu_ms = (ticks_after - ticks_before) as f64 / ticks_per_ms;
    println!(
        "concurrent: {total} claims on {THREADS} keep-alive connections: \
         p50 {:?}, p99 {:?}, {:.0} claims/s; \
         gateway-store CPU {:.1} ms per 1000 claims; RSS {} kB after",
        pct(&latencies, 0.50),
        pct(&latencies, 0.99),
        total as f64 / wall.as_secs_f64(),
        cpu_ms * 1000.0 / total as f64,
        rss_after,
    );
    assert_eq!(http.stats()["claimed"], 200 + CLAIMS + total);
}

#[test]
fn a_unix_socket_listener_serves_the_same_api() {
    let dir = TempDir::new();
    let sock = dir.0.join("store.sock");
    // a stale socket of an earlier run is replaced
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway-store"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .args(["--redis-url", &format!("redis://127.0.0.1:{}", free_port())])
        .args(["--namespace", "web.jwt"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(
        first.trim(),
        format!("gateway-store ready on unix:{}", sock.display())
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    conn.write_all(b"GET /stats HTTP/1.1\r\nhost: store\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"claims\""), "{answer}");
    child.kill().unwrap();
    child.wait().unwrap();
}
