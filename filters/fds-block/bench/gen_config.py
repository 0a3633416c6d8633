#!/usr/bin/env python3
"""Write an include root for `make bench` with fds-block holding 100,000 static entries.

    python3 filters/fds-block/bench/gen_config.py [--entries 100000] [--out build/fds-block-bench]

The output directory mirrors examples/ (symlinks) except config/fds-block/,
whose web.json and app.json are the shipped ones plus N static entries in the
mix that filters/fds-block/tests/memory.rs measures: 40% users, 20% devices,
30% IPs (half IPv4 /32, a quarter IPv4 /24, a quarter IPv6 /64), 10%
user+API. None of them matches the benchmark's traffic (client 127.0.0.1, no
identity), so every request pays a full miss: the IP lookup (one hash probe
per prefix length present) and, with a verified identity, the user, device
and user+API lookups. Point the renderer at it:

    python3 envoy/render.py --profile local --include-root build/fds-block-bench ...
    Stack(include_root="build/fds-block-bench", ...)     # tests/bench/run.py

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"


def entry(i: int) -> dict:
    """Entry i of the mix (keep in sync with tests/memory.rs)."""
    reason = f"fds case #{i:011d}"
    m = i % 10
    if m <= 3:
        return {"type": "user", "value": f"user-{i:07d}", "reason": reason}
    if m <= 5:
        return {"type": "device", "value": f"device-{i:07d}", "reason": reason}
    if m == 6:
        return {"type": "ip", "value": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", "reason": reason}
    if m == 7 and i % 20 == 7:
        k = i // 20
        return {"type": "ip", "value": f"100.{64 + (k >> 8)}.{k & 255}.0/24", "reason": reason}
    if m == 7:
        return {"type": "ip", "value": f"2001:db8:{(i >> 16) & 0xffff:x}:{i & 0xffff:x}::/64", "reason": reason}
    if m == 8:
        return {"type": "ip", "value": f"10.{128 | ((i >> 16) & 127)}.{(i >> 8) & 255}.{i & 255}", "reason": reason}
    return {"type": "user_api", "value": f"user-{i:07d}", "api": "POST /api/v1/orders", "reason": reason}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=REPO / "build" / "fds-block-bench")
    args = ap.parse_args()

    out: Path = args.out
    (out / "config" / "fds-block").mkdir(parents=True, exist_ok=True)
    for item in EXAMPLES.iterdir():
        if item.name == "config":
            continue
        link = out / item.name
        if not link.exists():
            os.symlink(item, link)
    for item in (EXAMPLES / "config").iterdir():
        if item.name == "fds-block":
            continue
        link = out / "config" / item.name
        if not link.exists():
            os.symlink(item, link)

    entries = [entry(i) for i in range(args.entries)]
    for gateway in ("web", "app"):
        cfg = json.loads((EXAMPLES / "config" / "fds-block" / f"{gateway}.json").read_text())
        cfg["entries"] = cfg.get("entries", []) + entries
        cfg["max_entries"] = max(cfg.get("max_entries", 100_000), len(cfg["entries"]))
        (out / "config" / "fds-block" / f"{gateway}.json").write_text(json.dumps(cfg, separators=(",", ":")))
    print(f"gen_config.py: {len(entries)} static entries -> {out}/config/fds-block/{{web,app}}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
