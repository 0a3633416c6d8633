//! Command line → validated configuration. Every bound is checked here, at
//! start-up; a bad value exits with status 2 and names the flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use redis::io::tcp::TcpSettings;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::api::Namespaces;
use crate::store::StoreConfig;

/// Largest `--timeout-ms`: the store is a fast path; a deadline of seconds
/// would hold the gateway's requests that long.
pub const MAX_TIMEOUT_MS: u64 = 10_000;
/// Largest `--max-ttl-ms` (one year).
pub const MAX_TTL_CEILING_MS: u64 = 365 * 24 * 3600 * 1000;
/// Largest `--max-value-bytes` (1 MiB).
pub const MAX_VALUE_CEILING: usize = 1 << 20;
/// Largest password file read.
const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// gateway-store: the gateway filters' only path to Redis. Claims a key once
/// (SET NX PX) and gets, sets and deletes sessions, in the namespaces given
/// here, and sends Redis nothing else.
#[derive(Debug, Parser)]
#[command(name = "gateway-store", version)]
pub struct Cli {
    /// Address to serve HTTP/1.1 and h2c on (port 0: any free port; the
    /// ready line names the one bound).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Redis to use: redis://HOST:PORT or redis+unix:///PATH (no credentials
    /// in the URL, database 0).
    #[arg(long, value_name = "URL")]
    pub redis_url: String,
    /// Redis ACL user (default: the `default` user).
    #[arg(long, value_name = "NAME", requires = "redis_password_file")]
    pub redis_user: Option<String>,
    /// File holding the Redis password on one line.
    #[arg(long, value_name = "PATH")]
    pub redis_password_file: Option<PathBuf>,
    /// A namespace the filters may use (repeat the flag; keys become
    /// gw:{namespace}:{key}).
    #[arg(long = "namespace", value_name = "NS", required = true)]
    pub namespaces: Vec<String>,
    /// Longest a request waits for Redis before 503; a request's
    /// x-deadline-ms header may shorten it.
    #[arg(long, value_name = "MS", default_value_t = 80)]
    pub timeout_ms: u64,
    /// Largest ttl_ms accepted.
    #[arg(long, value_name = "MS", default_value_t = 86_400_000)]
    pub max_ttl_ms: u64,
    /// Largest session value (request body) accepted; 413 above.
    #[arg(long, value_name = "BYTES", default_value_t = 16_384)]
    pub max_value_bytes: usize,
    /// Redis commands in flight at once (late claims included); a request
    /// that gets no slot before its deadline is answered 503.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_in_flight: usize,
    /// Client connections served at once; more wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub store: StoreConfig,
    pub namespaces: Namespaces,
    pub timeout_ms: u64,
    pub max_ttl_ms: u64,
    pub max_value_bytes: usize,
    pub max_connections: usize,
}

impl Config {
    /// Validates `cli`; `read_password` reads the password file (a parameter
    /// so that tests need no files).
    pub fn from_cli(
        cli: Cli,
        read_password: impl Fn(&Path) -> Result<String, String>,
    ) -> Result<Self, String> {
        let namespaces = Namespaces::new(cli.namespaces)?;
        in_range("--timeout-ms", cli.timeout_ms, 1, MAX_TIMEOUT_MS)?;
        in_range("--max-ttl-ms", cli.max_ttl_ms, 1, MAX_TTL_CEILING_MS)?;
        in_range_usize(
            "--max-value-bytes",
            cli.max_value_bytes,
            1,
            MAX_VALUE_CEILING,
        )?;
        in_range_usize("--max-in-flight", cli.max_in_flight, 1, 65_536)?;
        in_range_usize("--max-connections", cli.max_connections, 1, 65_536)?;

        let info = cli
            .redis_url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("--redis-url: {e}"))?;
        let given = info.redis_settings();
        if given.username().is_some() || given.password().is_some() {
            return Err(
                "--redis-url: no credentials in the URL; use --redis-user and --redis-password-file"
                    .into(),
            );
        }
        if given.db() != 0 {
            return Err("--redis-url: use database 0 (keys are namespaced by prefix)".into());
        }
        if !matches!(
            info.addr(),
            ConnectionAddr::Tcp(..) | ConnectionAddr::Unix(_)
        ) {
            return Err("--redis-url: redis:// or redis+unix:// only".into());
        }
        let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(user) = cli.redis_user {
            if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err("--redis-user: not a valid ACL user name".into());
            }
            settings = settings.set_username(user);
        }
        if let Some(path) = cli.redis_password_file {
            let password = password_from_file_text(&read_password(&path)?)
                .map_err(|e| format!("--redis-password-file {}: {e}", path.display()))?;
            settings = settings.set_password(password);
        }
        let redis = info
            .set_redis_settings(settings)
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));

        Ok(Self {
            listen: cli.listen,
            store: StoreConfig {
                redis,
                max_in_flight: cli.max_in_flight,
            },
            namespaces,
            timeout_ms: cli.timeout_ms,
            max_ttl_ms: cli.max_ttl_ms,
            max_value_bytes: cli.max_value_bytes,
            max_connections: cli.max_connections,
        })
    }
}

/// Reads a password file, refusing anything that is not a small file.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("--redis-password-file {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_PASSWORD_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("--redis-password-file {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_PASSWORD_FILE_BYTES {
        return Err(format!(
            "--redis-password-file {}: larger than {MAX_PASSWORD_FILE_BYTES} bytes",
            path.display()
        ));
    }
    Ok(text)
}

/// The password is the file's one line, without its line ending.
fn password_from_file_text(text: &str) -> Result<String, &'static str> {
    let line = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    if line.is_empty() {
        return Err("empty");
    }
    if line.contains(['\n', '\r']) {
        return Err("more than one line");
    }
    Ok(line.to_owned())
}

fn in_range(flag: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{flag} must be in {min}..={max}, got {value}"))
    }
}

fn in_range_usize(flag: &str, value: usize, min: usize, max: usize) -> Result<(), String> {
    in_range(flag, value as u64, min as u64, max as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec![
            "gateway-store",
            "--listen",
            "127.0.0.1:18090",
            "--redis-url",
            "redis://127.0.0.1:16379",
            "--namespace",
            "web.jwt",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
    }

    fn config(extra: &[&str]) -> Result<Config, String> {
        Config::from_cli(cli(extra).map_err(|e| e.to_string())?, |_| {
            Ok("s3cret\n".to_owned())
        })
    }

    #[test]
    fn the_documented_command_line_parses_with_its_defaults() {
        let c = config(&[
            "--redis-user",
            "gateway-store",
            "--redis-password-file",
            "examples/keys/redis-password",
            "--namespace",
            "app.replay-guard",
            "--namespace",
            "internal.oidc",
        ])
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:18090");
        assert_eq!(
            c.namespaces.names(),
            ["web.jwt", "app.replay-guard", "internal.oidc"]
        );
        assert_eq!(
            (c.timeout_ms, c.max_ttl_ms, c.max_value_bytes),
            (80, 86_400_000, 16_384)
        );
        let redis = c.store.redis.redis_settings();
        assert_eq!(redis.username(), Some("gateway-store"));
        assert_eq!(redis.password(), Some("s3cret"));
        assert!(
            redis.skip_set_lib_name(),
            "no CLIENT SETINFO: the ACL does not allow it"
        );
        assert!(c.store.redis.tcp_settings().nodelay());
    }

    #[test]
    fn bounds_are_checked() {
        assert!(config(&["--timeout-ms", "0"]).is_err());
        assert!(config(&["--timeout-ms", "10001"]).is_err());
        assert!(config(&["--max-ttl-ms", "0"]).is_err());
        assert!(config(&["--max-value-bytes", "0"]).is_err());
        assert!(config(&["--max-value-bytes", "2000000"]).is_err());
        assert!(config(&["--max-in-flight", "0"]).is_err());
        assert!(config(&["--namespace", "Bad:Ns"]).is_err());
        assert!(config(&["--namespace", "web.jwt"]).is_err(), "duplicate");
        assert!(config(&["--timeout-ms", "100", "--max-ttl-ms", "5"]).is_ok());
    }

    #[test]
    fn namespaces_listen_and_redis_url_are_required() {
        assert!(Cli::try_parse_from([
            "gateway-store",
            "--listen",
            "127.0.0.1:1",
            "--redis-url",
            "redis://x"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "gateway-store",
            "--redis-url",
            "redis://x",
            "--namespace",
            "a"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "gateway-store",
            "--listen",
            "127.0.0.1:1",
            "--namespace",
            "a"
        ])
        .is_err());
    }

    #[test]
    fn a_user_needs_a_password_file() {
        assert!(cli(&["--redis-user", "gateway-store"]).is_err());
    }

    #[test]
    fn credentials_and_databases_stay_out_of_the_url() {
        let with = |url: &str| {
            let mut c = cli(&[]).unwrap();
            c.redis_url = url.to_owned();
            Config::from_cli(c, |_| Ok("p".to_owned()))
        };
        assert!(with("redis://:pw@127.0.0.1:6379").is_err());
        assert!(with("redis://user:pw@127.0.0.1:6379").is_err());
        assert!(with("redis://127.0.0.1:6379/3").is_err());
        assert!(with("http://127.0.0.1:6379").is_err());
        assert!(with("not a url").is_err());
        assert!(with("redis://127.0.0.1:6379/0").is_ok());
        assert!(with("redis+unix:///run/redis.sock").is_ok());
    }

    #[test]
    fn the_password_is_the_files_one_line() {
        assert_eq!(password_from_file_text("abc\n").unwrap(), "abc");
        assert_eq!(password_from_file_text("abc\r\n").unwrap(), "abc");
        assert_eq!(password_from_file_text("abc").unwrap(), "abc");
        assert!(password_from_file_text("").is_err());
        assert!(password_from_file_text("\n").is_err());
        assert!(password_from_file_text("a\nb\n").is_err());
    }

    #[test]
    fn a_missing_password_file_is_an_error_naming_the_flag() {
        let err = read_password_file(Path::new("/nonexistent/redis-password")).unwrap_err();
        assert!(err.contains("--redis-password-file"), "{err}");
    }
}
