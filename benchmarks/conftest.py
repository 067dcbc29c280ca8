"""Benchmarks report each candidate as a ratio to its group's baseline, measured in the same run.

A test declares its role with ``benchmark.extra_info["role"] = "baseline" | "candidate"``; at
the end a table prints, per group, median times and baseline / candidate (higher is better).
"""

from __future__ import annotations

import json
import os


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, dict[str, list]] = {}
    for b in session.benchmarks:
        if not b.stats:  # --benchmark-disable
            continue
        role = b.extra_info.get("role", "candidate")
        groups.setdefault(b.group or "", {"baseline": [], "candidate": []})[role].append(b)
    rows = []
    for group, members in sorted(groups.items()):
        if not members["baseline"]:
            continue
        base = members["baseline"][0]
        for cand in members["candidate"]:
            rows.append(
                {
                    "group": group,
                    "baseline": base.name,
                    "candidate": cand.name,
                    "baseline_ms": base.stats.median * 1e3,
                    "candidate_ms": cand.stats.median * 1e3,
                    "speedup": base.stats.median / cand.stats.median,
                }
            )
    if not rows:
        return
    tr = terminalreporter
    tr.section("speed-up against the baseline (median, same run)")
    for r in rows:
        tr.write_line(
            f"{r['group']:<34} {r['candidate']:<42} {r['candidate_ms']:8.3f} ms   "
            f"{r['baseline']:<28} {r['baseline_ms']:8.3f} ms   x{r['speedup']:.2f}"
        )
    out = os.environ.get("EDGESEG_BENCH_JSON")
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=2)
