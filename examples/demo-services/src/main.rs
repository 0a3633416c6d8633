//! # demo-services — DEMO ONLY
//!
//! The four upstream services of the local demo stack, in one binary. They
//! keep everything in memory, have no authentication and are meant only for
//! the demo and the integration tests. Never expose them.
//!
//! Usage: `demo-services [--bind-host HOST] [--base-port N]` (defaults
//! `127.0.0.1` and `18080`). Prints `demo-services ready` on stdout once all
//! four listeners are bound; exits on SIGINT or SIGTERM.
//!
//! | port | service | endpoints |
//! |---|---|---|
//! | base+0 | echo | any path: 200 `{"method","path","query","headers","body","service":"echo"}`; under `/api/v1/unstable/`: `?status=NNN`, `?delay_ms=N` (≤ 30000); `GET /_stats` → `{"requests": N}` (counted when headers arrive); `POST /_stats/reset` |
//! | base+1 | passport issuer | `GET /v1/context?user=U&device=D`, `GET /v1/users/U/context?device=D` → `{"user_id","device_id","consents","risk_level","tier"}`, `unknown*` users → 404, `?delay_ms=N`; `GET /stats` → `{"calls": N}`; `POST /stats/reset` |
//! | base+2 | FDS feed | `GET /v1/blocklist` (`ETag`, `If-None-Match` → 304), `POST /v1/blocklist` (201 / 400 `invalid_entry`), `DELETE /v1/blocklist`, `DELETE /v1/blocklist/{id}`; `POST /v1/reports` (202), `GET /v1/reports`, `DELETE /v1/reports` |
//! | base+3 | partner | any path: like echo, with `"service":"partner"` |
//!
//! Request bodies are read up to 1 MiB (413 beyond). Unknown routes on the
//! issuer and the FDS feed answer 404 JSON.

mod echo;
mod fds;
mod http;
mod issuer;

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Which service a listener runs.
#[derive(Debug, Clone, Copy)]
enum Service {
    Echo,
    Issuer,
    Fds,
    Partner,
}

impl Service {
    const ALL: [Service; 4] = [
        Service::Echo,
        Service::Issuer,
        Service::Fds,
        Service::Partner,
    ];

    fn name(self) -> &'static str {
        match self {
            Service::Echo => "echo",
            Service::Issuer => "passport issuer",
            Service::Fds => "FDS feed",
            Service::Partner => "partner",
        }
    }
}

/// In-memory state of all services.
#[derive(Debug, Default)]
struct State {
    echo: echo::EchoState,
    issuer: issuer::IssuerState,
    fds: fds::FdsState,
}

async fn dispatch(service: Service, state: &State, req: Request<Incoming>) -> http::Resp {
    match service {
        Service::Echo => echo::handle_echo(&state.echo, req).await,
        Service::Issuer => issuer::handle(&state.issuer, req).await,
        Service::Fds => fds::handle(&state.fds, req).await,
        Service::Partner => echo::handle_partner(req).await,
    }
}

/// Command-line options.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    bind_host: String,
    base_port: u16,
}

const USAGE: &str = "usage: demo-services [--bind-host HOST] [--base-port N]\n\
DEMO ONLY: echo (N), passport issuer (N+1), FDS feed (N+2), partner (N+3); \
defaults 127.0.0.1 and 18080";

/// Parses the arguments (without the program name). `Ok(None)` means help.
fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Option<Options>, String> {
    let mut opts = Options {
        bind_host: "127.0.0.1".into(),
        base_port: 18080,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--bind-host" | "--base-port" => {
                let value = match inline {
                    Some(v) => v,
                    None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
                };
                if flag == "--bind-host" {
                    if value.is_empty() {
                        return Err("--bind-host needs a value".into());
                    }
                    opts.bind_host = value;
                } else {
                    let port: u16 = value
                        .parse()
                        .map_err(|_| format!("--base-port: not a port: {value}"))?;
                    if port == 0 || port > u16::MAX - 3 {
                        return Err(format!("--base-port must be in 1..={}", u16::MAX - 3));
                    }
                    opts.base_port = port;
                }
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(Some(opts))
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("demo-services: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-services: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(opts));
    // Do not wait for connections still open (e.g. a pending delay_ms).
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn run(opts: Options) -> ExitCode {
    let state = Arc::new(State::default());
    let mut listeners = Vec::with_capacity(Service::ALL.len());
    for (offset, service) in (0u16..).zip(Service::ALL) {
        let port = opts.base_port + offset;
        let addr = format!("{}:{}", opts.bind_host, port);
        match TcpListener::bind(&addr).await {
            Ok(listener) => {
                let local = listener.local_addr().map_or(addr, |a| a.to_string());
                eprintln!("demo-services: {} listening on {local}", service.name());
                listeners.push((service, listener));
            }
            Err(e) => {
                eprintln!(
                    "demo-services: cannot bind {} on {addr}: {e}",
                    service.name()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    for (service, listener) in listeners {
        tokio::spawn(accept_loop(service, listener, Arc::clone(&state)));
    }
    {
        let mut stdout = std::io::stdout().lock();
        // If stdout is gone there is nobody to tell; keep serving anyway.
        let _ = writeln!(stdout, "demo-services ready");
        let _ = stdout.flush();
    }
    match shutdown_signal().await {
        Ok(signal) => {
            eprintln!("demo-services: {signal}, stopping");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo-services: cannot wait for signals: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn accept_loop(service: Service, listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // e.g. too many open files: back off briefly and go on.
                eprintln!("demo-services: {} accept error: {e}", service.name());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(serve_connection(service, stream, peer, state));
    }
}

async fn serve_connection(
    service: Service,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(dispatch(service, &state, req).await) }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), svc)
        .await;
    if let Err(e) = result {
        if !e.is_incomplete_message() {
            eprintln!(
                "demo-services: {} connection from {peer}: {e}",
                service.name()
            );
        }
    }
}

/// Waits for SIGINT or SIGTERM and names the one that arrived.
async fn shutdown_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Options>, String> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_flags() {
        assert_eq!(
            args(&[]),
            Ok(Some(Options {
                bind_host: "127.0.0.1".into(),
                base_port: 18080
            }))
        );
        assert_eq!(
            args(&["--bind-host", "0.0.0.0", "--base-port=28080"]),
            Ok(Some(Options {
                bind_host: "0.0.0.0".into(),
                base_port: 28080
            }))
        );
        assert_eq!(args(&["--help"]), Ok(None));
        assert!(args(&["--base-port", "65534"]).is_err());
        assert!(args(&["--base-port"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
