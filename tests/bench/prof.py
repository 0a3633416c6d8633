#!/usr/bin/env python3
"""Profile Envoy under load on chosen bench listeners (docs/native.md, "Floors").

Keeps the bench stack (tests/bench/run.py's main-pass config, builds and
native listeners included) up, and for each PORT:LABEL runs wrk (pinned to
CPU 1, Envoy to CPU 0) while `perf record -g` samples Envoy, then prints
the split of samples by shared object (Envoy, the kernel, libc, the native
module). For symbols in the module, build it unstripped first:
`CARGO_PROFILE_NATIVE_STRIP=false CARGO_PROFILE_NATIVE_DEBUG=1 make
build-native-module`.

    .venv/bin/python tests/bench/prof.py 10509:raw5 10510:noop5 [--seconds 6] [--auth]
    .venv/bin/python tests/bench/prof.py "e2ee native encrypted 1 KiB:enc1" "e2ee native plain 1 KiB:plain1"

A target is a port (GET /api/v1/users/1) or the name of a `make bench`
target (its path, headers and request feed: signed, orders, tokens).

Output: build/bench/prof/<label>.data (perf report -i … for more).
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("targets", nargs="+", help="PORT:LABEL or TARGET NAME:LABEL")
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--auth", action="store_true", help="send the cached valid token")
    args = ap.parse_args()
    out = R.OUT / "prof"
    out.mkdir(parents=True, exist_ok=True)
    _lock = R.lock_stack()  # the stack's ports are fixed: wait for other sessions
    mat = R.Material(16)
    os.environ["WASM_BUILD"] = "filters"
    st = R.make_stack(name="envoy.yaml", builds=[R.build_listeners()])
    with st:
        pid = st.envoy_pid()
        R.pin(pid, "0")
        hdr = ["-H", f"authorization: Bearer {mat.cached}"] if args.auth else []
        named = {t["name"]: t for t in R.main_targets(mat) + R.native_targets(mat) + R.e2ee_native_targets()}
        runner = R.Runner(mat, pid, args.seconds)
        (R.OUT / "cycle.lua").write_text(R.LUA)
        for t in args.targets:
            name, label = t.rsplit(":", 1)
            if name.isdigit():
                port = name
                wrk = ["taskset", "-c", "1", "wrk", "-t1", "-c8", *hdr, f"http://127.0.0.1:{port}{R.USERS}"]
            else:
                tgt = named[name]
                port = tgt["port"]
                h = [x for k, v in tgt["headers"].items() for x in ("-H", f"{k}: {v}")]
                wrk = ["taskset", "-c", "1", "wrk", "-t1", "-c8", *h, f"http://127.0.0.1:{port}{tgt['path']}"]
                script = runner._script(tgt, 20000 * (args.seconds + 2))
                if script:
                    wrk += ["-s", str(R.OUT / "cycle.lua"), "--", str(script[0]), str(script[1])]
            subprocess.run([*wrk[:5], "-d2s", *wrk[5:]], capture_output=True, check=True)
            data = out / f"{label}.data"
            p = subprocess.Popen(["perf", "record", "-F", "4999", "-g", "-p", str(pid), "-o", str(data), "--",
                                  "sleep", str(args.seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            res = subprocess.run([*wrk[:5], f"-d{args.seconds}s", *wrk[5:]], capture_output=True, text=True,
                                 check=True).stdout
            p.wait()
            rps = [line.split()[1] for line in res.splitlines() if line.startswith("Requests/sec")]
            split = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "-g",
                                    "none", "--stdio"], capture_output=True, text=True).stdout
            rows = [line.strip() for line in split.splitlines() if line.strip() and not line.startswith("#")]
            print(f"{label} (port {port}): {rps[0] if rps else '?'} req/s; samples by object: "
                  + "; ".join(rows[:6]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
