"""The soak's figures and invariants: per phase (requests, answers by status
and code, p50/p99, Envoy RSS per replica), the invariants checked, and the
chart; written to build/soak/report.json, report.md and soak.png."""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import workload as wl

if TYPE_CHECKING:
    from run import Soak

#: RSS after the run may exceed RSS after warm-up by at most this much
#: (per replica): RSS_PCT percent plus RSS_MIB MiB (docs/soak.md).
RSS_PCT = float(os.environ.get("SOAK_RSS_BOUND_PCT", "10"))
RSS_MIB = float(os.environ.get("SOAK_RSS_BOUND_MIB", "24"))
#: Answers that may or may not have reached the echo (its counter can be
#: above what the workload saw answered by it by at most these).
AMBIGUOUS = {"unavailable", "upstream_reset", "no_healthy_upstream", "upstream_timeout", "connection_error",
             "client_timeout"}
#: Classes whose route ends at the echo.
ECHO_ROUTED = {c for c, steps in wl.NORMAL.items() if any(code == "echo" for s in steps.values() for _, code in s)}
#: Most tasks the dispatcher may skip (every client thread busy) before the
#: run no longer counts as "at the stated rate".
MAX_SKIPPED = 0.05


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def overlapped(soak: "Soak", r: wl.Result) -> list[int]:
    """The phases request `r` overlapped: the one it was sent in, and every
    later one that began before its answer came (a request sent just before
    a fault and answered during it meets that fault: a claim in flight when
    Redis gets SIGSTOP times out and fails closed)."""
    if not 0 <= r.phase < len(soak.phases):
        return []
    end = r.t + max(r.latency, 0.0)
    out = [r.phase]
    for i in range(r.phase + 1, len(soak.phases)):
        # A phase that has not begun has t0 == 0 (only warm-up starts at 0).
        if 0 < soak.phases[i].t0 <= end:
            out.append(i)
        else:
            break
    return out


def judge(soak: "Soak", r: wl.Result) -> str:
    """'normal', 'fault' (a documented answer of a fault the request met:
    overlapped()) or 'unexpected'."""
    answer = (r.status, r.code)
    if answer in wl.NORMAL.get(r.cls, {}).get(r.step, set()):
        return "normal"
    for i in overlapped(soak, r):
        for classes, replica, answers in soak.phases[i].allowed:
            if (classes is None or r.cls in classes) and (replica is None or r.replica == replica) \
                    and answer in answers:
                return "fault"
    return "unexpected"


def slope_mib_per_min(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (t seconds, kB) in MiB per minute."""
    if len(points) < 3:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] / 1024 for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def build(soak: "Soak", echo_total: int, panics: list[str], out: Path, args) -> dict:
    results = sorted(soak.results, key=lambda r: r.t)
    violations = list(soak.violations)
    phases_out = []
    verdicts = [judge(soak, r) for r in results]

    # ---- 1. answers: the class's normal one, or the phase's documented fault answers
    unexpected = Counter()
    for r, v in zip(results, verdicts):
        if v == "unexpected":
            unexpected[(soak.phases[r.phase].name if r.phase >= 0 else "?", r.cls, r.step, r.replica,
                        r.status, r.code)] += 1
    for (ph, cls, step, replica, status, code), n in sorted(unexpected.items()):
        kind = ("a 5xx/no answer not documented for this phase" if status >= 500 or status <= 0
                else "an unexpected answer")
        violations.append(f"{ph}: {n} x {cls}/{step} on replica {replica} got {status} {code}: {kind}")

    # ---- 2. no replay accepted (transfers, app nonces, a logged-out session)
    replays = [r for r in results if r.step in ("replay", "after_logout")]
    accepted = [r for r in replays if r.replay_accepted]
    for r in accepted:
        violations.append(f"{soak.phases[r.phase].name}: a replay was ACCEPTED: {r.cls}/{r.step} on replica "
                          f"{r.replica} ({r.status} {r.code})")

    # ---- 3. no denied request reached the echo
    passed = sum(1 for r in results if r.reached_echo) + soak.probe_echo
    ambiguous = sum(1 for r in results if r.cls in ECHO_ROUTED and r.code in AMBIGUOUS)
    echo = {"counter": echo_total, "answered_by_echo": passed, "ambiguous": ambiguous}
    if echo_total > passed + ambiguous:
        violations.append(f"the echo counted {echo_total} requests, but only {passed} were answered by it "
                          f"(+ {ambiguous} that may have reached it): {echo_total - passed - ambiguous} "
                          "denied request(s) reached the upstream")
    if echo_total < passed:
        violations.append(f"the echo counted {echo_total} requests, fewer than the {passed} it answered: "
                          "the accounting across its restart is wrong")

    # ---- 4. every replay / invalid signature reached the FDS reports (by suspect)
    expected = soak.suspects_expected()
    got, suppressed = soak.suspects_reported()
    fds_rows = []
    for suspect, n in sorted(expected.items(), key=lambda kv: (soak.phase_of(kv[0]), kv[0])):
        ph = soak.phases[soak.phase_of(suspect)]
        seen = got.get(suspect, 0)
        fds_rows.append({"suspect": list(suspect), "phase": ph.name, "events": n, "reported": seen,
                         "checked": ph.reports_checked})
        if ph.reports_checked and seen != n:
            violations.append(f"{ph.name}: {n} replay-guard event(s) of suspect {suspect}, {seen} in the FDS "
                              f"reports (suppressed in all reports: {suppressed})")
    if not any(row["checked"] and row["events"] for row in fds_rows):
        violations.append("no replay-guard event in a checked phase: the FDS invariant checked nothing")

    # ---- 5. no wasm panic
    for line in panics[:20]:
        violations.append(f"wasm panic/crash in Envoy's log: {line}")

    # ---- 6. memory: RSS after the run within a bound of RSS after warm-up
    warm_end = soak.phases[0].t1
    end = soak.phases[-1].t1
    rss_out = {}
    for replica in soak.stack.replicas:
        samples = [(t, kb) for t, r, kb in soak.rss if r == replica]
        base = [kb for t, kb in samples if warm_end - 5 <= t <= warm_end]
        last = [kb for t, kb in samples if end - 5 <= t <= end]
        if not base or not last:
            violations.append(f"replica {replica}: no RSS samples around the end of warm-up or of the run")
            continue
        b, e = statistics.median(base) / 1024, statistics.median(last) / 1024
        bound = b * (1 + RSS_PCT / 100) + RSS_MIB
        # the slope over the run after warm-up, per process life (a restart starts a new one)
        restart = next((p for p in soak.phases if p.name == "envoy-restart"), None)
        lives = [[(t, kb) for t, kb in samples if t >= warm_end]]
        if restart is not None and replica == 2:
            lives = [[(t, kb) for t, kb in samples if warm_end <= t < restart.fault_t0],
                     [(t, kb) for t, kb in samples if t >= restart.t1]]
        rss_out[replica] = {"after_warmup_mib": round(b, 1), "after_run_mib": round(e, 1),
                            "bound_mib": round(bound, 1), "max_mib": round(max(kb for _, kb in samples) / 1024, 1),
                            "slope_mib_per_min": [round(slope_mib_per_min(life), 3) for life in lives]}
        if e > bound:
            violations.append(f"replica {replica}: RSS {e:.1f} MiB after the run, above the bound {bound:.1f} MiB "
                              f"({b:.1f} MiB after warm-up + {RSS_PCT:g} % + {RSS_MIB:g} MiB)")

    # ---- 7. the rate held
    planned = soak.skipped + soak.submitted
    if planned and soak.skipped / planned > MAX_SKIPPED:
        violations.append(f"{soak.skipped} of {planned} tasks skipped (every client thread busy): the stack did not "
                          f"sustain {args.rate:g} tasks/s")

    # ---- per phase figures
    for i, ph in enumerate(soak.phases):
        rs = [(r, v) for r, v in zip(results, verdicts) if r.phase == i]
        lat = [r.latency * 1000 for r, _ in rs if r.status > 0]
        answers = Counter(f"{r.status} {r.code}" for r, _ in rs)
        errors = Counter(f"{r.status} {r.code}" for r, v in rs if v != "normal")
        rss_phase = {}
        for replica in soak.stack.replicas:
            kbs = [kb for t, r, kb in soak.rss if r == replica and ph.t0 <= t <= ph.t1]
            if kbs:
                rss_phase[replica] = {"first_mib": round(kbs[0] / 1024, 1), "last_mib": round(kbs[-1] / 1024, 1),
                                      "max_mib": round(max(kbs) / 1024, 1)}
        phases_out.append({
            "phase": ph.name, "what": ph.what, "start_s": round(ph.t0, 1), "end_s": round(ph.t1, 1),
            "fault_s": [round(ph.fault_t0, 1), round(ph.fault_t1, 1)] if ph.start else None,
            "requests": len(rs), "req_per_s": round(len(rs) / max(ph.t1 - ph.t0, 1e-9), 1),
            "normal": sum(1 for _, v in rs if v == "normal"),
            "fault_answers": sum(1 for _, v in rs if v == "fault"),
            "unexpected": sum(1 for _, v in rs if v == "unexpected"),
            "answers": dict(answers.most_common()), "errors": dict(errors.most_common()),
            "p50_ms": round(pct(lat, 50), 1), "p99_ms": round(pct(lat, 99), 1),
            "expected_fault_answers": [
                {"classes": sorted(c) if c else "any", "replica": rep or "any",
                 "answers": sorted(f"{s} {code}" for s, code in a)} for c, rep, a in ph.allowed],
            "reports_checked": ph.reports_checked, "rss": rss_phase, "notes": ph.notes,
        })

    doc = {
        "duration_s": round(soak.phases[-1].t1, 1), "rate_tasks_per_s": args.rate, "workers": args.workers,
        "requests": len(results), "skipped_tasks": soak.skipped,
        "replays": {"attempted": len(replays), "accepted": len(accepted)},
        "echo": echo, "fds_reports": {"suspects": fds_rows, "suppressed": suppressed},
        "sso_token_refreshes": soak.refreshes, "rss": rss_out, "rss_bound": {"pct": RSS_PCT, "mib": RSS_MIB}, "wasm_panics": panics[:20],
        "phases": phases_out, "violations": violations,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(doc))
    # the chart's series, so that a run can be charted again
    doc["series"] = chart(soak, results, verdicts, out / "soak.png")
    (out / "report.json").write_text(json.dumps(doc, indent=1))
    return doc


def markdown(doc: dict) -> str:
    lines = [f"# Soak: {doc['duration_s']:.0f} s, {doc['requests']} requests, "
             f"{doc['rate_tasks_per_s']:g} tasks/s", ""]
    lines += ["| phase | s | requests | req/s | normal | fault answers | unexpected | p50 ms | p99 ms | "
              "RSS r1 MiB | RSS r2 MiB | answers other than the normal ones |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in doc["phases"]:
        rss = [f"{p['rss'][r]['first_mib']}→{p['rss'][r]['last_mib']}" if r in p["rss"] else "–" for r in (1, 2)]
        errs = ", ".join(f"{k} ×{v}" for k, v in p["errors"].items()) or "–"
        lines.append(f"| {p['phase']} | {p['start_s']:.0f}–{p['end_s']:.0f} | {p['requests']} | {p['req_per_s']} | "
                     f"{p['normal']} | {p['fault_answers']} | {p['unexpected']} | {p['p50_ms']} | {p['p99_ms']} | "
                     f"{rss[0]} | {rss[1]} | {errs} |")
    lines += ["", "## Invariants", ""]
    r = doc["replays"]
    e = doc["echo"]
    lines.append(f"- replays attempted {r['attempted']}, accepted {r['accepted']}")
    lines.append(f"- echo counter {e['counter']}, answered by the echo {e['answered_by_echo']}, "
                 f"ambiguous (5xx/no answer on an echo route) {e['ambiguous']}")
    checked = [s for s in doc["fds_reports"]["suspects"] if s["checked"]]
    lines.append(f"- replay-guard suspects checked {len(checked)}: events "
                 f"{sum(s['events'] for s in checked)}, reported {sum(s['reported'] for s in checked)} "
                 f"(suppressed {doc['fds_reports']['suppressed']})")
    lines.append(f"- wasm panics in Envoy's logs: {len(doc['wasm_panics'])}")
    lines.append("- SSO access tokens refreshed by the gateway (per replica, since its start): "
                 + ", ".join(f"replica {r}: {n}" for r, n in doc["sso_token_refreshes"].items()))
    for rep, m in doc["rss"].items():
        lines.append(f"- replica {rep}: RSS {m['after_warmup_mib']} MiB after warm-up, {m['after_run_mib']} MiB "
                     f"after the run (bound {m['bound_mib']}), max {m['max_mib']}, slope "
                     f"{', '.join(str(s) for s in m['slope_mib_per_min'])} MiB/min")
    lines.append(f"- tasks skipped (every client thread busy): {doc['skipped_tasks']}")
    notes = [(p["phase"], n) for p in doc["phases"] for n in p["notes"]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {ph}: {n}" for ph, n in notes]
    lines += ["", "## Violations", ""]
    lines += [f"- {v}" for v in doc["violations"]] or ["none"]
    return "\n".join(lines) + "\n"


def chart(soak: "Soak", results: list[wl.Result], verdicts: list[str], path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # whole seconds only (the last, partial one would read as a drop)
    end = max(1, int(soak.phases[-1].t1))
    ok = [0] * end
    fault = [0] * end
    bad = [0] * end
    for r, v in zip(results, verdicts):
        s = int(r.t)
        if s >= end:
            continue
        (ok if v == "normal" else fault if v == "fault" else bad)[s] += 1
    # per-second counts of [s, s + 1): bars from s, line points at s + 0.5
    xs = list(range(end))
    mid = [x + 0.5 for x in xs]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(12, 8), sharex=True,
                                        gridspec_kw={"height_ratios": [2, 1.2, 2]})
    ax1.plot(mid, [a + b + c for a, b, c in zip(ok, fault, bad)], lw=0.8, color="#555", label="all answers")
    ax1.plot(mid, ok, lw=0.8, color="#2a7", label="normal answers")
    ax1.set_ylabel("requests / s")
    ax1.legend(loc="lower left", fontsize=8)
    ax2.bar(xs, fault, width=1.0, align="edge", color="#e9a23b", label="documented fault answers")
    ax2.bar(xs, bad, width=1.0, align="edge", bottom=fault, color="#d33", label="unexpected (invariant broken)")
    ax2.set_ylabel("errors / s")
    ax2.legend(loc="upper left", fontsize=8)
    colors = {1: "#1f77b4", 2: "#9467bd"}
    for replica in soak.stack.replicas:
        pts = [(t, kb / 1024) for t, r, kb in soak.rss if r == replica]
        ax3.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, color=colors.get(replica),
                 label=f"Envoy replica {replica} RSS")
    ax3.set_ylabel("RSS MiB")
    ax3.set_xlabel("seconds")
    ax3.legend(loc="lower right", fontsize=8)
    for ph in soak.phases:
        for ax in (ax1, ax2, ax3):
            ax.axvline(ph.t0, color="#bbb", lw=0.5)
            if ph.start:
                ax.axvspan(ph.fault_t0, ph.fault_t1 or ph.t1, color="#fbe3e1", lw=0, zorder=0)
        ax1.text((ph.t0 + ph.t1) / 2, 1.02, ph.name, transform=ax1.get_xaxis_transform(), rotation=30,
                 ha="left", va="bottom", fontsize=7)
    fig.suptitle(f"soak: {soak.rate:g} tasks/s, {len(results)} requests; shaded: fault on", y=0.995, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"per_second": {"normal": ok, "fault": fault, "unexpected": bad},
            "rss_kb": [[round(t, 1), r, kb] for t, r, kb in soak.rss],
            "fault_windows": [[ph.name, round(ph.fault_t0, 1), round(ph.fault_t1 or ph.t1, 1)]
                              for ph in soak.phases if ph.start]}
