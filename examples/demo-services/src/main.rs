//! # demo-services — DEMO ONLY
//!
//! The five upstream services of the local demo stack, in one binary. They
//! keep everything in memory, have no authentication (the OIDC provider's
//! users and client are demo fixtures) and are meant only for the demo and
//! the integration tests. Never expose them.
//!
//! Usage: `demo-services [--bind-host HOST] [--base-port N] [--oidc-issuer URL]
//! [--oidc-key PATH] [--oidc-client-secret-file PATH]` (defaults `127.0.0.1`,
//! `18080`, `http://localhost:18084`, `examples/keys/oidc-rs256.pem` and
//! `examples/keys/oidc-client-secret`, paths relative to the current
//! directory). Prints `demo-services ready` on stdout once all five listeners
//! are bound; exits on SIGINT or SIGTERM, or at once (status 1) when the OIDC
//! key material cannot be read.
//!
//! | port | service | endpoints |
//! |---|---|---|
//! | base+0 | echo | any path: 200 `{"method","path","query","headers","body","service":"echo"}`; under `/api/v1/unstable/`: `?status=NNN`, `?delay_ms=N` (≤ 30000); `GET /_stats` → `{"requests": N}` (counted when headers arrive); `POST /_stats/reset` |
//! | base+1 | passport issuer | `GET /v1/context?user=U&device=D`, `GET /v1/users/U/context?device=D` → `{"user_id","device_id","consents","risk_level","tier"}`, `unknown*` users → 404, `?delay_ms=N`; `GET /stats` → `{"calls": N}`; `POST /stats/reset` |
//! | base+2 | FDS feed | `GET /v1/blocklist` (`ETag`, `If-None-Match` → 304), `POST /v1/blocklist` (201 / 400 `invalid_entry`), `DELETE /v1/blocklist`, `DELETE /v1/blocklist/{id}`; `POST /v1/reports` (202), `GET /v1/reports`, `DELETE /v1/reports` |
//! | base+3 | partner | any path: like echo, with `"service":"partner"` |
//! | base+4 | OIDC provider | `GET /.well-known/openid-configuration`; `GET`/`POST /authorize` (HTML login form → 302 `redirect_uri?code&state`); `POST /token` (`client_secret_basic`, `authorization_code` + PKCE S256, `refresh_token` with rotation); `GET /jwks`; `GET /logout` (RP-initiated); `GET /stats` → `{"token_requests","authorize_requests","logins","logouts"}`; `POST /stats/reset`; DEMO/TEST ONLY `POST /_control/{next_id_token,rotate_key,delay_ms,reset}` |
//!
//! DEMO/TEST ONLY fault controls (module `fault`): `POST /_control/down
//! {"ms": N}` on the issuer, the FDS feed and the OIDC provider closes every
//! connection's requests without an answer for N ms; `POST
//! /_control/delay_ms {"ms": N}` on the issuer delays every lookup.
//!
//! Request bodies are read up to 1 MiB (413 beyond). Unknown routes on the
//! issuer, the FDS feed and the OIDC provider answer 404 JSON.

mod echo;
mod fault;
mod fds;
mod http;
mod issuer;
mod oidc;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    Oidc,
}

impl Service {
    const ALL: [Service; 5] = [
        Service::Echo,
        Service::Issuer,
        Service::Fds,
        Service::Partner,
        Service::Oidc,
    ];

    fn name(self) -> &'static str {
        match self {
            Service::Echo => "echo",
            Service::Issuer => "passport issuer",
            Service::Fds => "FDS feed",
            Service::Partner => "partner",
            Service::Oidc => "OIDC provider",
        }
    }
}

/// In-memory state of all services.
#[derive(Debug)]
struct State {
    echo: echo::EchoState,
    issuer: issuer::IssuerState,
    fds: fds::FdsState,
    oidc: oidc::OidcState,
    /// DEMO/TEST ONLY outages (`POST /_control/down`) of the dependencies.
    issuer_outage: fault::Outage,
    fds_outage: fault::Outage,
    oidc_outage: fault::Outage,
}

impl State {
    /// The outage switch of a service that has one (not the upstreams: the
    /// soak restarts the process for those).
    fn outage(&self, service: Service) -> Option<&fault::Outage> {
        match service {
            Service::Issuer => Some(&self.issuer_outage),
            Service::Fds => Some(&self.fds_outage),
            Service::Oidc => Some(&self.oidc_outage),
            Service::Echo | Service::Partner => None,
        }
    }
}

/// What a request to a service that is down gets: hyper closes the
/// connection without an answer.
#[derive(Debug)]
struct Down(&'static str);

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is down (/_control/down)", self.0)
    }
}

impl std::error::Error for Down {}

/// Serves one request, or refuses it while the service is down (but for the
/// control that ends the outage).
async fn serve(
    service: Service,
    state: &State,
    req: Request<Incoming>,
) -> Result<http::Resp, Down> {
    if let Some(outage) = state.outage(service) {
        if req.uri().path() == fault::DOWN_PATH {
            return Ok(fault::handle_down(outage, req).await);
        }
        if outage.is_down() {
            return Err(Down(service.name()));
        }
    }
    Ok(dispatch(service, state, req).await)
}

async fn dispatch(service: Service, state: &State, req: Request<Incoming>) -> http::Resp {
    match service {
        Service::Echo => echo::handle_echo(&state.echo, req).await,
        Service::Issuer => issuer::handle(&state.issuer, req).await,
        Service::Fds => fds::handle(&state.fds, req).await,
        Service::Partner => echo::handle_partner(req).await,
        Service::Oidc => oidc::handle(&state.oidc, req).await,
    }
}

/// Command-line options.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    bind_host: String,
    base_port: u16,
    /// The OIDC provider's issuer (`iss`, and the base of its endpoints).
    oidc_issuer: String,
    /// PKCS#8 PEM RSA key that signs ID tokens (kid `demo-oidc-rs256`).
    oidc_key: PathBuf,
    /// The `internal-gateway` client's secret, on one line.
    oidc_client_secret_file: PathBuf,
}

/// Services on consecutive ports from the base port.
const PORTS: u16 = 5;

const USAGE: &str = "usage: demo-services [--bind-host HOST] [--base-port N] \
[--oidc-issuer URL] [--oidc-key PATH] [--oidc-client-secret-file PATH]\n\
DEMO ONLY: echo (N), passport issuer (N+1), FDS feed (N+2), partner (N+3), \
OIDC provider (N+4); defaults 127.0.0.1, 18080, http://localhost:18084, \
examples/keys/oidc-rs256.pem, examples/keys/oidc-client-secret";

/// Parses the arguments (without the program name). `Ok(None)` means help.
fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Option<Options>, String> {
    let mut opts = Options {
        bind_host: "127.0.0.1".into(),
        base_port: 18080,
        oidc_issuer: oidc::DEFAULT_ISSUER.into(),
        oidc_key: oidc::DEFAULT_KEY_PATH.into(),
        oidc_client_secret_file: oidc::DEFAULT_SECRET_PATH.into(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--bind-host"
            | "--base-port"
            | "--oidc-issuer"
            | "--oidc-key"
            | "--oidc-client-secret-file" => {
                let value = match inline {
                    Some(v) => v,
                    None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
                };
                if value.is_empty() {
                    return Err(format!("{flag} needs a value"));
                }
                match flag.as_str() {
                    "--bind-host" => opts.bind_host = value,
                    "--oidc-issuer" => {
                        let issuer = value.trim_end_matches('/');
                        if !(issuer.starts_with("http://") || issuer.starts_with("https://"))
                            || issuer.contains(['?', '#'])
                        {
                            return Err(format!(
                                "--oidc-issuer: an http(s) URL without query or fragment: {value}"
                            ));
                        }
                        opts.oidc_issuer = issuer.to_owned();
                    }
                    "--oidc-key" => opts.oidc_key = value.into(),
                    "--oidc-client-secret-file" => opts.oidc_client_secret_file = value.into(),
                    _ => {
                        let port: u16 = value
                            .parse()
                            .map_err(|_| format!("--base-port: not a port: {value}"))?;
                        if port == 0 || port > u16::MAX - (PORTS - 1) {
                            return Err(format!(
                                "--base-port must be in 1..={}",
                                u16::MAX - (PORTS - 1)
                            ));
                        }
                        opts.base_port = port;
                    }
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
    let oidc = match oidc::OidcState::load(
        &opts.oidc_issuer,
        &opts.oidc_key,
        &opts.oidc_client_secret_file,
    ) {
        Ok(oidc) => oidc,
        Err(e) => {
            eprintln!("demo-services: OIDC provider: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = Arc::new(State {
        echo: echo::EchoState::default(),
        issuer: issuer::IssuerState::default(),
        fds: fds::FdsState::default(),
        oidc,
        issuer_outage: fault::Outage::default(),
        fds_outage: fault::Outage::default(),
        oidc_outage: fault::Outage::default(),
    });
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
        async move { serve(service, &state, req).await }
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

    fn defaults() -> Options {
        Options {
            bind_host: "127.0.0.1".into(),
            base_port: 18080,
            oidc_issuer: "http://localhost:18084".into(),
            oidc_key: "examples/keys/oidc-rs256.pem".into(),
            oidc_client_secret_file: "examples/keys/oidc-client-secret".into(),
        }
    }

    #[test]
    fn parses_flags() {
        assert_eq!(args(&[]), Ok(Some(defaults())));
        assert_eq!(
            args(&["--bind-host", "0.0.0.0", "--base-port=28080"]),
            Ok(Some(Options {
                bind_host: "0.0.0.0".into(),
                base_port: 28080,
                ..defaults()
            }))
        );
        assert_eq!(
            args(&[
                "--oidc-issuer=https://idp.example/",
                "--oidc-key",
                "/run/demo/k.pem",
                "--oidc-client-secret-file",
                "/run/demo/s"
            ]),
            Ok(Some(Options {
                oidc_issuer: "https://idp.example".into(),
                oidc_key: "/run/demo/k.pem".into(),
                oidc_client_secret_file: "/run/demo/s".into(),
                ..defaults()
            }))
        );
        assert_eq!(args(&["--help"]), Ok(None));
        assert!(args(&["--base-port", "65532"]).is_err());
        assert!(args(&["--base-port", "65531"]).is_ok());
        assert!(args(&["--oidc-issuer", "localhost:18084"]).is_err());
        assert!(args(&["--oidc-key="]).is_err());
        assert!(args(&["--base-port"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
