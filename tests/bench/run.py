#!/usr/bin/env python3
"""`make bench`: the gateways against bare Envoy, in one run, as ratios.

Starts the demo stack with the bench listeners (tests/bench/listeners.yaml)
and Envoy at --concurrency 1 pinned to CPU 0, the load generator (wrk,
HTTP/1.1) pinned to CPU 1, then measures every target in interleaved rounds
so that drift on a shared machine hits all targets alike:

  * throughput: wrk -t1 -c16 for --seconds per round -> requests/s, and the
    Envoy CPU time per request (utime+stime of the Envoy process / requests);
  * unloaded latency: wrk -t1 -c1 -> p50 / p99.

It prints one table (medians over rounds) with ratios to bare Envoy on the
same route and the added CPU per request compared with one no-op wasm filter
(the floor every wasm filter pays), and writes build/bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "envoy"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import stack as stack_mod  # noqa: E402

OUT = REPO / "build" / "bench"
TCK = os.sysconf("SC_CLK_TCK")

# name, port, path, headers, baseline target name
Target = dict


def targets() -> list[Target]:
    t: list[Target] = []
    for route, path in (("direct", "/health"), ("upstream", "/api/v1/public/bench")):
        t.append({"name": f"bare {route}", "port": 10009, "path": path, "headers": {}, "base": f"bare {route}"})
        t.append({"name": f"noop {route}", "port": 10010, "path": path, "headers": {}, "base": f"bare {route}",
                  "floor": True})
        t.append({"name": f"web {route}", "port": 10000, "path": path, "headers": {}, "base": f"bare {route}",
                  "floor_of": f"noop {route}"})
    return t


def envoy_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[11], [12] are utime, stime (the 14th/15th of the full line)
    return (int(fields[11]) + int(fields[12])) / TCK


_LAT = re.compile(r"^\s*(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def _to_us(v: str, unit: str) -> float:
    return float(v) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def wrk(url: str, headers: dict, conns: int, seconds: float) -> dict:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url]
    for k, v in headers.items():
        cmd[-1:-1] = ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {p: _to_us(v, u) for p, v, u in _LAT.findall(out)}
    return {"requests": reqs, "rps": rps, "p50_us": lat.get("50"), "p99_us": lat.get("99"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


def measure(st: stack_mod.Stack, ts: list[Target], rounds: int, seconds: float) -> dict:
    pid = st._envoy.proc.pid  # noqa: SLF001 - the bench owns this stack
    res: dict[str, dict[str, list[float]]] = {t["name"]: {"rps": [], "cpu_us": [], "p50": [], "p99": []} for t in ts}
    for r in range(rounds):
        for t in ts:
            url = f"http://127.0.0.1:{t['port']}{t['path']}"
            c0 = envoy_cpu_seconds(pid)
            w = wrk(url, t["headers"], 16, seconds)
            c1 = envoy_cpu_seconds(pid)
            if w["non2xx"]:
                raise SystemExit(f"{t['name']}: {w['non2xx']} non-2xx responses from {url}")
            lat = wrk(url, t["headers"], 1, max(1.0, seconds / 2))
            m = res[t["name"]]
            m["rps"].append(w["rps"])
            m["cpu_us"].append((c1 - c0) * 1e6 / max(1, w["requests"]))
            m["p50"].append(lat["p50_us"])
            m["p99"].append(lat["p99_us"])
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in res.items()}


def report(ts: list[Target], med: dict) -> list[dict]:
    rows = []
    for t in ts:
        m = med[t["name"]]
        base = med[t["base"]]
        row = {
            "target": t["name"],
            "rps": round(m["rps"]),
            "rps_ratio_to_bare": round(m["rps"] / base["rps"], 3),
            "envoy_cpu_us_per_req": round(m["cpu_us"], 1),
            "added_cpu_us": round(m["cpu_us"] - base["cpu_us"], 1),
            "p50_us": round(m["p50"]),
            "p99_us": round(m["p99"]),
            "added_p50_us": round(m["p50"] - base["p50"]),
            "added_p99_us": round(m["p99"] - base["p99"]),
        }
        if "floor_of" in t:
            floor = med[t["floor_of"]]["cpu_us"] - base["cpu_us"]
            row["added_cpu_vs_floor"] = round(row["added_cpu_us"] / floor, 2) if floor > 0.5 else None
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    cols = ["target", "rps", "rps_ratio_to_bare", "envoy_cpu_us_per_req", "added_cpu_us",
            "added_cpu_vs_floor", "p50_us", "p99_us"]
    head = ["target", "req/s", "×bare", "CPU µs/req", "+CPU µs", "+CPU ×floor", "p50 µs", "p99 µs"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 4)))
    ap.add_argument("--only", help="regex of target names to run")
    args = ap.parse_args()
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: `make bench` installs it (apt-get install wrk util-linux)")
    ts = targets()
    if args.only:
        ts = [t for t in ts if re.search(args.only, t["name"]) or t["name"].startswith("bare")]
        keep = {t["name"] for t in ts} | {t["base"] for t in ts} | {t.get("floor_of") for t in ts}
        ts = [t for t in targets() if t["name"] in keep]
    OUT.mkdir(parents=True, exist_ok=True)
    # Same lock as the integration tests: the contract's ports are fixed.
    import fcntl

    lock = open(Path(os.environ.get("TMPDIR", "/tmp")) / "gateway-filters-stack.lock", "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    st = stack_mod.Stack(
        extra_listeners=[REPO / "tests" / "bench" / "listeners.yaml"],
        config_path=OUT / "envoy.yaml",
        log_dir=OUT / "logs",
        concurrency=1,
        log_level="error",
        component_log_level="",
    )
    with st:
        subprocess.run(["taskset", "-a", "-pc", "0", str(st._envoy.proc.pid)],  # noqa: SLF001
                       check=True, capture_output=True)
        for t in ts:  # warm up every path (VMs, connections, caches)
            wrk(f"http://127.0.0.1:{t['port']}{t['path']}", t["headers"], 4, 1)
        print(f"bench: {len(ts)} targets x {args.rounds} rounds x {args.seconds}s, "
              "envoy --concurrency 1 on CPU 0, wrk on CPU 1", file=sys.stderr)
        med = measure(st, ts, args.rounds, args.seconds)
    rows = report(ts, med)
    wasm = {p.name: p.stat().st_size for p in sorted((REPO / "target/wasm32-wasip1/release").glob("*.wasm"))}
    result = {"machine": {"nproc": os.cpu_count(), "uname": " ".join(os.uname())},
              "method": {"rounds": args.rounds, "seconds": args.seconds, "connections": 16, "tool": "wrk -t1"},
              "rows": rows, "wasm_bytes": wasm, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (OUT / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print_table(rows)
    print()
    print("wasm sizes: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in wasm.items()))
    print(f"results: {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
