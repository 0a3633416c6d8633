//! `gatewayctl`: the gateway team's command line, built from the filters'
//! own config types (every filter crate is a dependency, as an rlib).
//!
//! ```text
//! gatewayctl validate sanitize examples/config/sanitize/web.json
//! gatewayctl validate --all
//! gatewayctl validate-manifest istio/generated
//! gatewayctl schema jwt
//! gatewayctl body-hold sanitize examples/config/sanitize/web.json [--json]
//! gatewayctl body-hold chain chain-config.json [--json]
//! gatewayctl token --scope orders:write [--sub user-1] [--kid demo-es256] [--ttl 300] [--jti auto]
//! gatewayctl sign POST http://127.0.0.1:10001/api/v1/orders --body '{"item_id":"a","quantity":1}'
//! gatewayctl key-id [--device phone-1] [--user alice] [--ttl 600]
//! gatewayctl encrypt --key-id <kid> [--rs 4096] < plain > body      (RFC 8188 aes128gcm)
//! gatewayctl decrypt --key-id <kid> < body > plain
//! gatewayctl drift --admin http://127.0.0.1:9901
//! ```
//!
//! Exit status: 0 success, 1 an invalid config or a drift, 2 a usage or
//! environment error. See filters/gatewayctl/README.md.

#[cfg(test)]
mod config_arbitrary;
#[cfg(test)]
mod config_paths;
mod drift;
mod filters;
mod jsondiff;
mod sign;
mod token;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "gatewayctl",
    version,
    about = "Validate, inspect and exercise the gateway filters' configuration"
)]
struct Cli {
    /// Repository root (default: the nearest parent directory holding envoy/render.py).
    #[arg(long, global = true, value_name = "DIR")]
    repo: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Validate a filter config file, or every examples/config/<filter>/*.json with --all.
    Validate {
        /// Filter name (sanitize, jwt, replay-guard, fds-block, passport, san-authz, route-breaker),
        /// or `chain` for a chain build's configuration (each part checked by its filter).
        #[arg(required_unless_present = "all", requires = "file")]
        filter: Option<String>,
        /// The JSON config file.
        file: Option<PathBuf>,
        /// Validate every example config of every filter.
        #[arg(long, conflicts_with_all = ["filter", "file"])]
        all: bool,
    },
    /// Validate the pluginConfig of every Istio WasmPlugin in YAML files or directories.
    ValidateManifest {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print a filter's config JSON Schema (`chain`: the chain build's configuration).
    Schema { filter: String },
    /// List the config settings that make the filter hold the request headers while it
    /// reads the body: they need Envoy's allow_on_headers_stop_iteration, which an Istio
    /// WasmPlugin cannot set (none listed: the config runs correctly without it).
    BodyHold {
        /// Filter name (sanitize, jwt, replay-guard, fds-block, passport, san-authz, route-breaker),
        /// or `chain` for a chain build's configuration (fields `filters[i].config.<field>`).
        filter: String,
        /// The JSON config file (`-`: standard input).
        file: PathBuf,
        /// Print a JSON array of {"field", "reason"} objects instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Mint a demo JWT for the web gateway (demo keys under examples/keys).
    Token {
        /// Space-separated scopes, e.g. "orders:write users:read".
        #[arg(long, default_value = "")]
        scope: String,
        #[arg(long, default_value = "user-1")]
        sub: String,
        #[arg(long, default_value = "demo-rs256", value_parser = ["demo-rs256", "demo-es256"])]
        kid: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 300)]
        ttl: u64,
        /// `auto` (random), `none`, or a value.
        #[arg(long, default_value = "auto")]
        jti: String,
    },
    /// Print RFC 9421 signature headers for an app-gateway request (`Name: value` lines for curl -H).
    Sign {
        /// HTTP method.
        method: String,
        /// Full URL (http://127.0.0.1:10001/api/v1/users/7?size=10): authority and path+query are signed.
        url: String,
        /// Request body (its Content-Digest is signed).
        #[arg(long, conflicts_with = "body_file")]
        body: Option<String>,
        /// Request body from a file.
        #[arg(long, value_name = "FILE")]
        body_file: Option<PathBuf>,
        #[arg(long, default_value = "phone-1")]
        device: String,
        #[arg(long, default_value = "alice")]
        user: String,
        /// Key lifetime in seconds (the key id's expiry is now + ttl).
        #[arg(long, default_value_t = 600)]
        ttl: u64,
        /// Master secret file, base64 on one line (default: examples/keys/app-master.key).
        #[arg(long, value_name = "FILE")]
        master: Option<PathBuf>,
        /// Sign with this key id instead of `<device>:<user>:<now + ttl>` (the one
        /// an encrypted body names: `gatewayctl key-id`, `gatewayctl encrypt`).
        #[arg(long, value_name = "KID")]
        key_id: Option<String>,
    },
    /// Print a fresh app key id, `<device>:<user>:<now + ttl>`.
    KeyId {
        #[arg(long, default_value = "phone-1")]
        device: String,
        #[arg(long, default_value = "alice")]
        user: String,
        /// Key lifetime in seconds.
        #[arg(long, default_value_t = 600)]
        ttl: u64,
    },
    /// Encrypt standard input for the app gateway (RFC 8188 aes128gcm, the key of
    /// the key id; docs/filters/e2ee.md) and write the body to standard output.
    Encrypt {
        /// The key id of the request signature (`gatewayctl key-id`).
        #[arg(long, value_name = "KID")]
        key_id: String,
        /// Record size (at least 18).
        #[arg(long, default_value_t = 4096)]
        rs: u32,
        /// Master secret file, base64 on one line (default: examples/keys/app-master.key).
        #[arg(long, value_name = "FILE")]
        master: Option<PathBuf>,
    },
    /// Decrypt an aes128gcm body (a request, or the gateway's encrypted answer) from
    /// standard input to standard output.
    Decrypt {
        /// The key id the body was encrypted for.
        #[arg(long, value_name = "KID")]
        key_id: String,
        /// Master secret file, base64 on one line (default: examples/keys/app-master.key).
        #[arg(long, value_name = "FILE")]
        master: Option<PathBuf>,
    },
    /// Compare the wasm filter configs a live Envoy holds with the repository's render.
    Drift {
        /// Envoy admin address.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// render.py profile.
        #[arg(long, default_value = "local")]
        profile: String,
        /// Root of ${json:...} includes (default: the repository's examples/).
        #[arg(long, value_name = "DIR")]
        include_root: Option<PathBuf>,
        /// Compare with this already rendered file instead of running render.py.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["include_root", "extra"])]
        rendered: Option<PathBuf>,
        /// Extra listeners the live Envoy was rendered with (render.py
        /// --extra: the benchmark's listeners, the tests' probe listener).
        #[arg(long, value_name = "FILE")]
        extra: Vec<PathBuf>,
    },
}

/// The repository root: `--repo`, else the nearest parent of the working
/// directory with envoy/render.py, else the checkout this binary was built from.
fn repo_root(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Ok(cwd) = std::env::current_dir() {
        let mut dir: Option<&Path> = Some(&cwd);
        while let Some(d) = dir {
            if d.join("envoy/render.py").is_file() {
                return d.to_path_buf();
            }
            dir = d.parent();
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn print_reports(reports: &[validate::Report]) -> ExitCode {
    let mut bad = 0;
    for r in reports {
        match &r.error {
            None => println!("ok      {}", r.what),
            Some(e) => {
                bad += 1;
                println!("INVALID {}: {e}", r.what);
            }
        }
    }
    if bad > 0 {
        eprintln!("{bad} of {} config(s) invalid", reports.len());
        ExitCode::from(1)
    } else {
        eprintln!("{} config(s) valid", reports.len());
        ExitCode::SUCCESS
    }
}

fn filter(name: &str) -> Result<&'static filters::Filter> {
    match filters::find(name) {
        Some(f) => Ok(f),
        None => bail!("unknown filter {name:?} (known: {})", filters::names()),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let repo = repo_root(cli.repo.as_deref());
    match cli.command {
        Cmd::Validate {
            filter: name,
            file,
            all,
        } => {
            if all {
                return Ok(print_reports(&validate::all(
                    &repo.join("examples/config"),
                )?));
            }
            let (Some(name), Some(file)) = (name, file) else {
                bail!("validate needs <filter> <file.json>, or --all");
            };
            if name == "chain" {
                return Ok(print_reports(&[validate::chain_file(&file)]));
            }
            Ok(print_reports(&[validate::file(filter(&name)?, &file)]))
        }
        Cmd::ValidateManifest { paths } => {
            let mut reports = Vec::new();
            for p in &paths {
                reports.extend(validate::manifests(p)?);
            }
            if reports.is_empty() {
                bail!("no WasmPlugin found in {paths:?}");
            }
            Ok(print_reports(&reports))
        }
        Cmd::Schema { filter: name } => {
            // `chain`: the chain build's configuration (filters/chain/config.schema.json).
            let schema = if name == "chain" {
                chain::config::schema()
            } else {
                filter(&name)?.schema()
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BodyHold {
            filter: name,
            file,
            json,
        } => {
            // `chain`: a chain build's configuration, every part judged by its filter.
            let f = if name == "chain" {
                None
            } else {
                Some(filter(&name)?)
            };
            let bytes = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .context("reading standard input")?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let holds =
                match f.map_or_else(|| filters::chain_body_hold(&bytes), |f| f.body_hold(&bytes)) {
                    Ok(h) => h,
                    Err(e) => {
                        println!("INVALID {}: {e}", file.display());
                        return Ok(ExitCode::from(1));
                    }
                };
            if json {
                let list: Vec<serde_json::Value> = holds
                    .iter()
                    .map(|h| serde_json::json!({"field": h.field, "reason": h.reason}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else if holds.is_empty() {
                println!(
                    "{}: never holds the request headers for the body",
                    f.map_or("chain", |f| f.name)
                );
            } else {
                for h in &holds {
                    println!("{}: {}", h.field, h.reason);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Token {
            scope,
            sub,
            kid,
            ttl,
            jti,
        } => {
            let t = token::mint(
                &repo.join("examples/keys"),
                &token::Request {
                    scope: &scope,
                    sub: &sub,
                    kid: &kid,
                    ttl,
                    jti: &jti,
                    now: now(),
                },
            )?;
            println!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sign {
            method,
            url,
            body,
            body_file,
            device,
            user,
            ttl,
            master,
            key_id,
        } => {
            let secret = read_master(&repo, master)?;
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .with_context(|| format!("{url:?}: expected an http:// or https:// URL"))?;
            let (authority, target) = match rest.find('/') {
                Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
                None => (rest, "/"),
            };
            let target = target.split('#').next().unwrap_or("/");
            let body: Option<Vec<u8>> = match (body, body_file) {
                (Some(b), _) => Some(b.into_bytes()),
                (None, Some(f)) => {
                    Some(std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?)
                }
                (None, None) => None,
            };
            let t = now();
            let key_id = key_id.unwrap_or_else(|| format!("{device}:{user}:{}", t + ttl));
            let nonce = token::random_hex(16)?;
            let headers = sign::sign(
                &secret,
                &sign::Request {
                    method: &method,
                    authority,
                    target,
                    body: body.as_deref(),
                    key_id: &key_id,
                    created: t,
                    nonce: &nonce,
                },
            )?;
            for (n, v) in headers {
                println!("{n}: {v}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::KeyId { device, user, ttl } => {
            let key_id = format!("{device}:{user}:{}", now() + ttl);
            sign::check_key_id(&key_id)?;
            println!("{key_id}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Encrypt { key_id, rs, master } => {
            let secret = read_master(&repo, master)?;
            let plain = read_stdin()?;
            let mut salt = [0u8; e2ee::codec::SALT_LEN];
            getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let ikm = e2ee::codec::ikm(&secret, key_id.as_bytes());
            let Some(body) = e2ee::codec::seal(&plain, &ikm, salt, rs, key_id.as_bytes()) else {
                bail!("the record size must be at least 18 and the key id at most 255 bytes");
            };
            write_stdout(&body)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Decrypt { key_id, master } => {
            let secret = read_master(&repo, master)?;
            let body = read_stdin()?;
            let limits = e2ee::codec::Limits {
                max_record_size: u32::MAX,
                max_records: usize::MAX,
            };
            let plain = e2ee::codec::open(&body, &limits, |kid| {
                if kid == key_id.as_bytes() {
                    Ok(vec![e2ee::codec::ikm(&secret, kid)])
                } else {
                    Err(e2ee::codec::CodingError::KeyMismatch)
                }
            })
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            write_stdout(&plain)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Drift {
            admin,
            profile,
            include_root,
            rendered,
            extra,
        } => {
            let repo_doc = match rendered {
                Some(f) => drift::read_yaml(
                    &std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?,
                )?,
                None => drift::render_repo(&repo, &profile, include_root.as_deref(), &extra)?,
            };
            let want = drift::from_bootstrap(&repo_doc);
            if want.is_empty() {
                bail!("the repository's render has no wasm filter: wrong file or profile?");
            }
            let mut have = drift::from_config_dump(&drift::fetch_config_dump(&admin)?);
            // ECDS: the dump shows the config read last, even a refused one.
            if have.values().flatten().any(|f| f.ecds.is_some()) {
                let running = drift::running_versions(&drift::fetch_ecds_stats(&admin)?);
                drift::mark_refused(&mut have, &running);
            }
            let diffs = drift::compare(&want, &have);
            let filters: usize = want.values().map(Vec::len).sum();
            if diffs.is_empty() {
                println!(
                    "no drift: {} listener(s), {filters} wasm filter config(s) match the repository",
                    want.len()
                );
                return Ok(ExitCode::SUCCESS);
            }
            for d in &diffs {
                println!("DRIFT {d}");
            }
            eprintln!(
                "{} difference(s) between the repository and {admin}",
                diffs.len()
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// The app master secret (base64 on one line), by default the demo's.
fn read_master(repo: &Path, master: Option<PathBuf>) -> Result<Vec<u8>> {
    use base64::Engine;
    let master_path = master.unwrap_or_else(|| repo.join("examples/keys/app-master.key"));
    let text = std::fs::read_to_string(&master_path)
        .with_context(|| format!("reading {}", master_path.display()))?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .with_context(|| format!("{} is not base64", master_path.display()))
}

fn read_stdin() -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("reading standard input")?;
    Ok(buf)
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).context("writing standard output")?;
    out.flush().context("writing standard output")
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatewayctl: {e:#}");
            ExitCode::from(2)
        }
    }
}
