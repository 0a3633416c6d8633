//! The binary end to end: exit codes, field paths, outputs.

// Helpers below are test code too (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .arg("--repo")
        .arg(repo())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_shipped_example_config_validates() {
    let o = run(&["validate", "--all"]);
    assert!(
        o.status.success(),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    for f in [
        "sanitize",
        "jwt",
        "replay-guard",
        "e2ee",
        "fds-block",
        "passport",
        "san-authz",
        "route-breaker",
    ] {
        assert!(
            stdout(&o).contains(&format!("examples/config/{f}/")),
            "{f}: {}",
            stdout(&o)
        );
    }
}

#[test]
fn a_broken_config_fails_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("gatewayctl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"routes":[{"name":"x","prefix":"/a","methds":["GET"]}]}"#,
    )
    .unwrap();
    let o = run(&["validate", "sanitize", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("routes[0].methds"), "{}", stdout(&o));
    let manifest = dir.join("m.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n\
         apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: web-route-breaker}\n\
         spec:\n  pluginConfig:\n    nme: web\n",
    )
    .unwrap();
    let o = run(&["validate-manifest", manifest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("spec.pluginConfig.nme"),
        "{}",
        stdout(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_filter_is_a_usage_error() {
    let o = run(&["schema", "nope"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn schema_prints_the_committed_schema() {
    for name in ["sanitize", "chain"] {
        let o = run(&["schema", name]);
        assert!(o.status.success(), "{name}");
        let have: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join(format!("filters/{name}/config.schema.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(have, want, "{name}");
    }
}

#[test]
fn token_is_a_three_part_jwt_with_the_demo_kid() {
    let o = run(&["token", "--scope", "orders:write", "--kid", "demo-es256"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = stdout(&o);
    let parts: Vec<&str> = t.trim().split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
        .unwrap();
    let h: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(h["kid"], "demo-es256");
    assert_eq!(h["alg"], "ES256");
}

#[test]
fn sign_prints_curl_header_lines() {
    let o = run(&[
        "sign",
        "GET",
        "http://127.0.0.1:10001/api/v1/users/7?size=10",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    assert!(
        out.lines().any(|l| l
            .starts_with("Signature-Input: app=(\"@method\" \"@authority\" \"@path\" \"@query\")")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("Signature: app=:")),
        "{out}"
    );
    assert!(!out.contains("Content-Digest"));
}

#[test]
fn a_chain_config_is_validated_part_by_part() {
    let dir = std::env::temp_dir().join(format!("gatewayctl-chain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = repo().join("examples/config");
    let part = |p: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(cfg.join(p)).unwrap()).unwrap()
    };
    let mut doc = serde_json::json!({"filters": [
        {"name": "sanitize", "config": part("sanitize/web.json")},
        {"name": "jwt", "config": part("jwt/web.json")},
        {"name": "route-breaker", "config": part("route-breaker/web.json")},
    ], "disabled_on_routes": {"health": ["route-breaker"]}});
    let good = dir.join("chain.json");
    std::fs::write(&good, serde_json::to_vec(&doc).unwrap()).unwrap();
    let o = run(&["validate", "chain", good.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    doc["filters"][1]["config"]["cache_entriez"] = serde_json::json!(1);
    let bad = dir.join("bad-chain.json");
    std::fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    let o = run(&["validate", "chain", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("filters[1].config.cache_entriez"),
        "{}",
        stdout(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .arg("--repo")
        .arg(repo())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn encrypt_and_decrypt_round_trip_under_the_key_id_only() {
    let kid = stdout(&run(&["key-id", "--device", "cli-dev"]))
        .trim()
        .to_string();
    assert!(kid.starts_with("cli-dev:alice:"), "{kid}");
    let plain = br#"{"item_id":"a-1","quantity":2}"#;
    let enc = run_with_stdin(&["encrypt", "--key-id", &kid, "--rs", "18"], plain);
    assert!(enc.status.success());
    // header: 16-byte salt, rs 18, the key id
    assert_eq!(&enc.stdout[16..20], &18u32.to_be_bytes());
    assert_eq!(&enc.stdout[21..21 + kid.len()], kid.as_bytes());
    let dec = run_with_stdin(&["decrypt", "--key-id", &kid], &enc.stdout);
    assert!(dec.status.success());
    assert_eq!(dec.stdout, plain);
    let other = run_with_stdin(&["decrypt", "--key-id", "x:y:1"], &enc.stdout);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("key id"));
}
