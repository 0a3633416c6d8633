//! The `spin:<n>` probe's work (see [`spin`]).

/// A fixed piece of pure work (`spin:<n>`: `n` rounds per request, no host
/// call), the kind of code the filters run over a request: split a path and
/// query, percent-decode, compare names, build a few strings. The same
/// function runs under Node's V8 (`examples/spin.rs`, `--no-liftoff` for
/// TurboFan, `--liftoff --no-wasm-tier-up` for the baseline tier), so that
/// its cost inside Envoy tells which code tier Envoy's V8 runs
/// (docs/performance.md).
pub fn spin(rounds: u32) -> u64 {
    const PATH: &str = "/api/v1/users/1?size=20&page=3&sort=name%2C-created&filter=act%69ve";
    let mut h: u64 = 0;
    for r in 0..rounds {
        let (path, query) = PATH.split_once('?').unwrap_or((PATH, ""));
        let segments = path.split('/').filter(|s| !s.is_empty()).count();
        let mut pairs: Vec<(String, String)> = Vec::new();
        for piece in query.split('&') {
            let (n, v) = piece.split_once('=').unwrap_or((piece, ""));
            pairs.push((decode(n), decode(v)));
        }
        let size = pairs
            .iter()
            .find(|(n, _)| n == "size")
            .and_then(|(_, v)| v.parse::<i64>().ok())
            .unwrap_or(20)
            .clamp(1, 100);
        let rebuilt: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let out = format!("{path}?{}", rebuilt.join("&"));
        h = h
            .wrapping_mul(31)
            .wrapping_add(out.len() as u64 + segments as u64 + size as u64 + u64::from(r & 1));
    }
    h
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b.get(i).copied().unwrap_or(0);
        if c == b'%' {
            let hex = |k: usize| b.get(k).and_then(|x| (*x as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_default()
}
