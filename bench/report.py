"""Ratios to the direct upstream, the targets of issue 4, and the printed table."""

from __future__ import annotations

from typing import Any

from bench.loadgen import Result

MB = 1024


def compare(found: dict[tuple[str, int], Result], name: str, baseline: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (target, concurrency), result in sorted(found.items(), key=lambda item: item[0][1]):
        if target != name:
            continue
        direct = found[(baseline, concurrency)]
        mine, theirs = result.summary(), direct.summary()
        out[f"c={concurrency}"] = {
            name: mine,
            baseline: theirs,
            "ratio": round(result.rps / direct.rps, 3) if direct.rps else None,
            "ttfc_added_ms_p50": round(mine["ttfc_ms"]["p50"] - theirs["ttfc_ms"]["p50"], 3),
        }
    return out


def _get(tree: dict[str, Any], *path: str) -> Any:
    node: Any = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def targets(out: dict[str, Any]) -> list[tuple[str, Any, bool | None]]:
    """(target, measured, met) for every target of the issue; met is None when not measured."""
    s = out["scenarios"]

    def check(label: str, value: Any, ok: Any) -> tuple[str, Any, bool | None]:
        return (label, value, None if value is None else bool(ok(value)))

    a64, a1 = _get(s, "A", "c=64", "ratio"), _get(s, "A", "c=1", "ttfc_added_ms_p50")
    a_rps, d_rps = _get(s, "A", "c=64", "A", "rps"), _get(s, "D", "c=64", "D", "rps")
    d_factor = round(a_rps / d_rps, 1) if a_rps and d_rps else None
    memory = s.get("memory", {})
    idle = memory.get("rss_idle_kb")
    startup = memory.get("startup_seconds")
    rows = [
        check("A: c=64 throughput >= 0.5x direct", a64, lambda v: v >= 0.5),
        check("A: c=1 TTFC added (p50) <= 2 ms", a1, lambda v: v <= 2),
        check("B: c=16 throughput >= 0.25x direct", _get(s, "B", "c=16", "ratio"), lambda v: v >= 0.25),
        check("C: c=64 throughput >= 0.15x direct", _get(s, "C", "c=64", "ratio"), lambda v: v >= 0.15),
        check("C: every message stored", _get(s, "C", "every_message_stored"), lambda v: v),
        check("D: A throughput >= 40x LiteLLM (c=64)", d_factor, lambda v: v >= 40),
        check("idle worker RSS <= 120 MB", round(idle / MB, 1) if idle else None, lambda v: v <= 120),
        check("RSS per idle WebSocket <= 40 KB", memory.get("kb_per_websocket"), lambda v: v <= 40),
        check("start to /health < 2 s", max(startup) if startup else None, lambda v: v < 2),
    ]
    for label, key, limit in (
        ("conversation list p99 <= 10 ms", "conversation list (any page)", 10),
        ("message page p99 <= 10 ms", "message page (first)", 10),
        ("search (default: recent) p99 <= 50 ms", "search recent (all queries)", 50),
        ("search (sort=relevance) p99 <= 50 ms", "search relevance (all queries)", 50),
    ):
        rows.append(check(label, _get(s, "data", key, "latency_ms", "p99"), lambda v, limit=limit: v <= limit))
    return rows


def table(out: dict[str, Any]) -> str:
    lines = [f"machine: {out['machine']['cpus']} cores ({out['machine']['cpu_model']}), pinned {out['machine']}"]
    header = f"{'scenario':<8}{'c':>4}{'rps':>10}{'direct':>10}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}"
    header += f"{'ttfc50':>9}{'+ttfc':>8}{'errors':>8}{'late':>6}{'cpu us/req':>12}"
    lines += ["", header, "-" * len(header)]
    for name in ("A", "B", "C", "D"):
        scenario = out["scenarios"].get(name)
        if not scenario:
            continue
        if "skipped" in scenario:
            lines.append(f"{name:<8}{scenario['skipped']}")
            continue
        for key, row in scenario.items():
            if not key.startswith("c="):
                continue
            mine = row[name]
            cpu = mine.get("server_cpu_us_per_request")
            lines.append(
                f"{name:<8}{key[2:]:>4}{mine['rps']:>10.0f}{row['direct']['rps']:>10.0f}{row['ratio']:>8.3f}"
                f"{mine['latency_ms']['p50']:>9.2f}{mine['latency_ms']['p99']:>9.2f}"
                f"{mine['ttfc_ms']['p50']:>9.2f}{row['ttfc_added_ms_p50']:>8.2f}{mine['errors']:>8}{mine['late']:>6}"
                f"{cpu if cpu is not None else '-':>12}"
            )
        if name == "C":
            lines.append(f"{'':<8}turns answered {scenario['turns_answered']}, stored {scenario['stored']}")
            if scenario.get("postgres_cpu_us_per_turn") is not None:
                lines.append(f"{'':<8}PostgreSQL CPU per stored turn: {scenario['postgres_cpu_us_per_turn']} us")
    memory = out["scenarios"].get("memory")
    if memory:
        lines += ["", "memory:"] + [f"  {key}: {value}" for key, value in memory.items()]
    data = out["scenarios"].get("data")
    if data:
        lines += ["", f"data ({data['corpus']}):", f"  {'request':<52}{'p50 ms':>9}{'p99 ms':>9}{'n':>8}"]
        for key, value in data.items():
            if key != "corpus":
                latency = value["latency_ms"]
                lines.append(f"  {key:<52}{latency['p50']:>9.2f}{latency['p99']:>9.2f}{value['requests']:>8}")
    lines += ["", "targets:"]
    for label, value, met in targets(out):
        verdict = "not measured" if met is None else ("met" if met else "MISSED")
        lines.append(f"  {label:<44}{value!s:>12}  {verdict}")
    return "\n".join(lines)
