"""What a run of ``overhead.py`` comes to: per-path summaries, the ratios against each peer, the issue's targets
checked, the printed table, the PNG chart, and the top of a py-spy profile.

A scenario's results are ``{"paths": {path: summary}}``; a summary has ``req_per_s`` over all blocks, ``p50_ms``
and ``p99_ms`` as medians of the blocks' own (one hiccup of a noisy machine moves one block, not the figure),
``added_p50_ms``/``added_p99_ms`` against the direct path, ``cpu_ms_per_request`` and ``peak_rss_mb``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import loadkit

from peers.processes import ROOT

PATHS = ("direct", "gateway", "gateway-redis", "gateway-before", "nginx", "vllm-router", "litellm", "aiohttp-pass")
"""Every path, in the order they are reported (``gateway-redis``: the gateway with its fleet state in Redis,
``peers/state_store.py``; ``gateway-before``: the gateway of an earlier revision, ``--before``)."""
GATEWAYS = ("gateway", "gateway-redis", "gateway-before")
FLEET_ADDED_P50_MS = 0.1
"""gateway-redis against gateway, same run (the fleet-state issue): its added p50 at 50 ms c16 at most this much
higher, its capacity at least ``FLEET_CAPACITY_X`` of the gateway's."""
FLEET_CAPACITY_X = 0.9
NOISY_CORES = 0.15
"""A block during which processes outside the benchmark used more CPU than this (in cores) counts as noisy."""
CAPACITY_X_PASSTHROUGH = 0.8
"""The capacity target against the bare aiohttp pass-through once the upstream transport is aiohttp's client too
(the performance issue asked for 1x with the gateway's own HTTP/1.1 client; the hardening issue, for 0.8x)."""


def summarize(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(b["requests"] for b in blocks)
    duration = sum(b["duration_s"] for b in blocks)
    errors: dict[str, int] = {}
    for block in blocks:
        for kind, n in block["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    summary = {
        "requests": requests,
        "req_per_s": round(requests / duration, 1) if duration else 0.0,
        "p50_ms": round(statistics.median(b["p50_ms"] for b in blocks), 3),
        "p99_ms": round(statistics.median(b["p99_ms"] for b in blocks), 3),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "cpu_ms_per_request": round(1000 * sum(b["cpu_s"] for b in blocks) / requests, 3) if requests else None,
        "foreign_cores_max": max(b["foreign_cores"] for b in blocks),
        "noisy_blocks": sum(b["foreign_cores"] > NOISY_CORES for b in blocks),
    }
    for key in ("total_p50_ms", "spread_p50_ms", "reads_p50"):
        if key in blocks[0]:
            summary[key] = round(statistics.median(b[key] for b in blocks), 3)
    return summary


def figure(results: dict[str, Any], scenario: str, path: str, key: str) -> float | None:
    value = results.get(scenario, {}).get("paths", {}).get(path, {}).get(key)
    return None if value is None else float(value)


def peer_ratios(results: dict[str, Any], subject: str = "gateway") -> dict[str, Any]:
    """``subject`` (a gateway) against each other path measured: capacity and CPU per request as ratios, added
    latency side by side."""
    ratios: dict[str, Any] = {}
    gateway_rps = figure(results, "fast-c64", subject, "req_per_s")
    gateway_cpu = figure(results, "fast-c64", subject, "cpu_ms_per_request")
    for peer in (p for p in PATHS[1:] if p != subject):
        peer_rps = figure(results, "fast-c64", peer, "req_per_s")
        if peer_rps is None or gateway_rps is None:
            continue
        peer_cpu = figure(results, "fast-c64", peer, "cpu_ms_per_request")
        ratios[peer] = {
            "capacity_x": round(gateway_rps / peer_rps, 3) if peer_rps else None,
            "cpu_per_request_x": round(gateway_cpu / peer_cpu, 3) if gateway_cpu and peer_cpu else None,
            "added_p50_ms_50ms_c16": [figure(results, "slow-c16", p, "added_p50_ms") for p in (subject, peer)],
            "added_p99_ms_50ms_c16": [figure(results, "slow-c16", p, "added_p99_ms") for p in (subject, peer)],
            "ttft_added_p50_ms_c16": [figure(results, "stream-c16", p, "added_p50_ms") for p in (subject, peer)],
        }
    return ratios


def check_targets(
    results: dict[str, Any], ratios: dict[str, Any], scale: dict[str, Any], streams: int, subject: str = "gateway"
) -> list[dict[str, Any]]:
    """The issues' targets for ``subject`` (a gateway; ``ratios`` its own), each with the measured value, whether it
    is met (``None``: not measured), and whether the blocks it comes from stayed noisy (other processes took the
    CPU: the verdict is then weak). The scale test runs the current gateway only."""

    def target(name: str, value: float | None, op: str, limit: float, *sources: tuple[str, str]) -> dict[str, Any]:
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        noisy = any(figure(results, scenario, path, "noisy_blocks") for scenario, path in sources)
        return {"target": name, "value": value, "op": op, "limit": limit, "met": met, "noisy": noisy}

    spread, direct_spread = (figure(results, "stream-c16", p, "spread_p50_ms") for p in (subject, "direct"))
    gateway_scale = scale.get(subject, {})
    ran = bool(gateway_scale) and scale.get("streams") == streams
    held = ran and gateway_scale.get("completed") == streams

    def gateway(scenario: str, key: str) -> float | None:
        return figure(results, scenario, subject, key)

    def added(scenario: str) -> tuple[tuple[str, str], ...]:
        return ((scenario, subject), (scenario, "direct"))

    capacity = ("fast-c64", subject)
    targets = [
        target(
            "added p50 ms, upstream after 50 ms, c16", gateway("slow-c16", "added_p50_ms"), "<=", 1, *added("slow-c16")
        ),
        target(
            "added p99 ms, upstream after 50 ms, c16", gateway("slow-c16", "added_p99_ms"), "<=", 5, *added("slow-c16")
        ),
        target(
            "added p50 ms, upstream after 50 ms, c1", gateway("slow-c1", "added_p50_ms"), "<=", 0.5, *added("slow-c1")
        ),
        target("req/s, upstream at once, c64", gateway("fast-c64", "req_per_s"), ">=", 2000, capacity),
        target(
            "capacity x LiteLLM",
            ratios.get("litellm", {}).get("capacity_x"),
            ">=",
            30,
            capacity,
            ("fast-c64", "litellm"),
        ),
        target(
            "capacity x vllm-router",
            ratios.get("vllm-router", {}).get("capacity_x"),
            ">=",
            0.25,
            capacity,
            ("fast-c64", "vllm-router"),
        ),
        target(
            "capacity x a bare aiohttp pass-through",
            ratios.get("aiohttp-pass", {}).get("capacity_x"),
            ">=",
            CAPACITY_X_PASSTHROUGH,
            capacity,
            ("fast-c64", "aiohttp-pass"),
        ),
        target("stream TTFT added p50 ms, c16", gateway("stream-c16", "added_p50_ms"), "<=", 1, *added("stream-c16")),
        target(
            "stream chunk spread / direct's (no buffering)",
            round(spread / direct_spread, 3) if spread is not None and direct_spread else None,
            ">=",
            0.9,
            *added("stream-c16"),
        ),
        target(f"{streams} slow streams held, errors", gateway_scale.get("errors") if ran else None, "<=", 0),
        target(f"{streams} slow streams, peak RSS MB", gateway_scale.get("rss_peak_mb") if held else None, "<=", 300),
    ]
    for scaled in targets[-2:]:
        scaled["noisy"] = gateway_scale.get("foreign_cores", 0.0) > NOISY_CORES
    return targets


def check_fleet_targets(results: dict[str, Any], failed_syncs: int | None) -> list[dict[str, Any]]:
    """The fleet-state issue's targets: gateway-redis against gateway (``memory://``) in the same run, and whether
    gateway-redis kept in sync with Redis all along (``failed_syncs``: its failed syncs, summed over the phases;
    ``None``: not measured), without which its row would measure a gateway serving on its local state."""
    p50s = [figure(results, "slow-c16", p, "added_p50_ms") for p in ("gateway-redis", "gateway")]
    rps = [figure(results, "fast-c64", p, "req_per_s") for p in ("gateway-redis", "gateway")]
    latency = round(p50s[0] - p50s[1], 3) if p50s[0] is not None and p50s[1] is not None else None
    capacity = round(rps[0] / rps[1], 3) if rps[0] is not None and rps[1] else None

    def target(name: str, value: float | None, op: str, limit: float, scenario: str) -> dict[str, Any]:
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        noisy = any(figure(results, scenario, p, "noisy_blocks") for p in ("gateway-redis", "gateway"))
        return {"target": name, "value": value, "op": op, "limit": limit, "met": met, "noisy": noisy}

    return [
        target("added p50 ms at 50 ms c16, gateway-redis - gateway", latency, "<=", FLEET_ADDED_P50_MS, "slow-c16"),
        target("capacity (req/s at once, c64) x gateway's", capacity, ">=", FLEET_CAPACITY_X, "fast-c64"),
        target("failed syncs with Redis, gateway-redis", failed_syncs, "<=", 0, ""),
    ]


HEADERS = ["scenario", "path", "req/s", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "CPU ms/req", "RSS MB", "err"]


def rows(data: dict[str, Any]) -> list[list[Any]]:
    """One row per scenario and path, in :data:`HEADERS`' order (streams: the latencies are times to first token)."""
    table = []
    for scenario in data["results"].values():
        for name in PATHS:
            s = scenario["paths"].get(name)
            if s is not None:
                cpu = s["cpu_ms_per_request"] if name != "direct" else None
                latency = [s["p50_ms"], s["p99_ms"], _num(s.get("added_p50_ms")), _num(s.get("added_p99_ms"))]
                table.append(
                    [scenario["label"], name, s["req_per_s"], *latency, _num(cpu), _num(s["peak_rss_mb"]), s["errors"]]
                )
    return table


def markdown(data: dict[str, Any]) -> str:
    """The table and the targets as Markdown, for docs/performance.md and the README."""
    cells = [HEADERS, ["---"] * len(HEADERS), *[[_cell(c) for c in row] for row in rows(data)]]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    subjects = [k for k in ("targets", "targets_before") if data.get(k)]
    names = {"targets": "gateway", "targets_before": "gateway-before"}
    if len(subjects) == 1:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
    else:
        lines += ["", "| target | " + " | ".join(f"{names[k]} | met" for k in subjects) + " |", "|---|---|---|---|---|"]
    for i, t in enumerate(data["targets"]):
        measured = " | ".join(f"{_num(data[k][i]['value'])} | {_verdict(data[k][i])}" for k in subjects)
        lines.append(f"| {t['target']} {t['op']} {t['limit']} | {measured} |")
    if data.get("targets_redis"):
        lines += ["", "| target, gateway-redis vs gateway (same run) | measured | met |", "|---|---|---|"]
        for t in data["targets_redis"]:
            lines.append(f"| {t['target']} {t['op']} {t['limit']} | {_num(t['value'])} | {_verdict(t)} |")
    return "\n".join(lines)


def _verdict(target: dict[str, Any]) -> str:
    return {True: "yes", False: "**no**", None: "not measured"}[target["met"]] + (
        " (noisy)" if target.get("noisy") else ""
    )


def _cell(value: Any) -> str:
    return _num(value) if isinstance(value, float) else str(value)


def text(data: dict[str, Any]) -> str:
    """The table, the ratios against each peer, the targets, the scale test, noise, and the profile's top."""
    headers, table = HEADERS, rows(data)
    lines = [loadkit.table(headers, table)]
    results = data["results"]
    for subject, ratios, targets in (
        ("gateway", data["ratios"], data["targets"]),
        ("gateway-before", data.get("ratios_before"), data.get("targets_before")),
    ):
        if targets is None:
            continue
        lines += ["", f"{subject} ({data.get('gateways', {}).get(subject, 'this checkout')}) vs peers (same run):"]
        for peer, r in (ratios or {}).items():
            peer_rps = figure(results, "fast-c64", peer, "req_per_s") or 0.0
            p50, p99 = r["added_p50_ms_50ms_c16"], r["added_p99_ms_50ms_c16"]
            lines.append(
                f"  {peer:<14} capacity {_x(r['capacity_x'])} ({peer_rps:,.0f} req/s), CPU/request "
                f"{_x(r['cpu_per_request_x'])}, added p50/p99 at 50 ms c16: {subject} {_num(p50[0])}/{_num(p99[0])} "
                f"ms, {peer} {_num(p50[1])}/{_num(p99[1])} ms"
            )
        lines += ["", f"targets, {subject}:", *_target_lines(targets)]
    if data.get("targets_redis"):
        described = data.get("gateways", {}).get("gateway-redis", "--state redis://")
        lines += ["", f"targets, gateway-redis ({described}) vs gateway (memory://), same run:"]
        lines += _target_lines(data["targets_redis"])
    scale = data["scale"]
    if scale:
        lines += [
            "",
            f"scale: {scale['streams']} streams, a token every {scale['token_interval_s']} s (paced: "
            f"{scale['paced_s']:.1f} s a stream):",
        ]
        for name in ("direct", "gateway"):
            h = scale[name]
            memory = f", RSS {h['rss_start_mb']} -> peak {h['rss_peak_mb']} MB" if h["rss_peak_mb"] is not None else ""
            lines.append(
                f"  {name:<8} {h['completed']}/{scale['streams']} ok, {h['errors']} errors, max open {h['max_open']}, "
                f"stream p50/p99 {h['stream_p50_s']}/{h['stream_p99_s']} s{memory}, proxy core "
                f"{100 * h['cpu_share']:.0f}% busy with it; other processes used {h['foreign_cores']:.2f} cores"
            )
    noisy = [
        f"{s['label']} {name} ({p['noisy_blocks']}, up to {p['foreign_cores_max']:.2f} cores)"
        for s in data["results"].values()
        for name, p in s["paths"].items()
        if p["noisy_blocks"]
    ]
    if noisy:
        lines += ["", "noisy blocks (other processes used the CPU), still noisy after retries: " + ", ".join(noisy)]
    for key, profile in (data.get("profiles") or {}).items():
        if profile.get("self_pct"):
            lines += [
                "",
                f"gateway profile, {key} (py-spy, {profile['samples']} samples of its event loop), self time:",
            ]
            lines += [f"  {pct:5.1f}%  {name}" for name, pct in profile["self_pct"][:10]]
            lines += ["gateway code, inclusive:"]
            lines += [f"  {pct:5.1f}%  {name}" for name, pct in profile["gateway_inclusive_pct"][:10]]
        else:
            lines += ["", f"profile {key}: {profile.get('error')}"]
    return "\n".join(lines)


def _target_lines(targets: list[dict[str, Any]]) -> list[str]:
    lines = []
    for t in targets:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]] + (
            " (noisy)" if t.get("noisy") else ""
        )
        lines.append(f"  {verdict:<20} {t['target']}: {_num(t['value'])} (target {t['op']} {t['limit']})")
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}x"


def chart(data: dict[str, Any], path: Path) -> str:
    """A 2x2 PNG: capacity, added latency at 50 ms c16, CPU per request, streaming TTFT added; '' or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    results = data["results"]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels: list[tuple[Any, str, str, Sequence[str], Callable[[dict[str, Any]], list[float | None]]]] = [
        (axes[0][0], "req/s, upstream at once, c64 (higher is better)", "fast-c64", PATHS, _values("req_per_s")),
        (axes[0][1], "added ms at p50 / p99, upstream after 50 ms, c16", "slow-c16", PATHS[1:], _added),
        (axes[1][0], "CPU ms per request, at once, c64", "fast-c64", PATHS[1:], _values("cpu_ms_per_request")),
        (axes[1][1], "stream: TTFT added ms at p50 / p99, c16", "stream-c16", PATHS[1:], _added),
    ]
    for ax, title, key, names, values_of in panels:
        ax.set_title(title, fontsize=10)
        paths = results.get(key, {}).get("paths", {})
        shown = [n for n in names if n in paths]
        if not shown:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        series = [values_of(paths[n]) for n in shown]
        bars_per_path = len(series[0])
        width = 0.8 / bars_per_path
        # A log scale from the power of ten below the smallest positive value; a value at or below 0 (no added
        # latency) is drawn at that floor and labelled as it is.
        positive = [v for s in series for v in s if v is not None and v > 0]
        floor = 10.0 ** math.floor(math.log10(min(positive, default=0.01)))
        for i in range(bars_per_path):
            xs = [j + i * width for j in range(len(shown))]
            heights = [max(s[i] or 0.0, floor) for s in series]
            bars = ax.bar(xs, heights, width=width, label=["p50", "p99"][i] if bars_per_path > 1 else None)
            ax.bar_label(bars, labels=[_num(s[i]) for s in series], fontsize=7)
        ax.set_xticks([j + (bars_per_path - 1) * width / 2 for j in range(len(shown))], shown)
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        if bars_per_path > 1:
            ax.legend(fontsize=8)
    gateways = data.get("gateways", {})
    measured = ", ".join(f"{k}: {v}" for k, v in gateways.items() if k != "gateway-redis") or data["revision"]
    measured += ", gateway-redis: the gateway with --state redis://" if "gateway-redis" in gateways else ""
    figure.suptitle(f"llm-gateway overhead ({measured}; {data['machine']['pinning']})", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return ""


def _values(key: str) -> Callable[[dict[str, Any]], list[float | None]]:
    return lambda summary: [summary.get(key)]


def _added(summary: dict[str, Any]) -> list[float | None]:
    return [summary.get("added_p50_ms"), summary.get("added_p99_ms")]


def top_frames(speedscope: dict[str, Any], top: int = 15) -> dict[str, Any]:
    """Where the event loop's thread spends its time (% of its busy samples): self time per function, and
    inclusive time per function of the gateway package. Other threads (the policy file watcher, ...) are only
    counted, so that a thread waiting in native code cannot blur the request path's shares."""
    frames = speedscope["shared"]["frames"]
    names = [f"{f['name']} ({_short(f.get('file') or '')})" for f in frames]
    threads = sorted(speedscope["profiles"], key=lambda p: -len(p["samples"]))
    loop = threads[0]
    self_time: dict[str, float] = {}
    inclusive: dict[str, float] = {}
    total = sum(loop["weights"])
    for stack, weight in zip(loop["samples"], loop["weights"], strict=True):
        if stack:
            self_time[names[stack[-1]]] = self_time.get(names[stack[-1]], 0) + weight
        for name in {names[i] for i in stack if _in_gateway(frames[i].get("file") or "")}:
            inclusive[name] = inclusive.get(name, 0) + weight

    def ranked(table: dict[str, float]) -> list[list[Any]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100 * weight / total, 1)] for name, weight in best]

    return {
        "thread": loop["name"],
        "samples": len(loop["samples"]),
        "busy_s": round(total, 2),
        "other_threads": {t["name"]: len(t["samples"]) for t in threads[1:]},
        "self_pct": ranked(self_time),
        "gateway_inclusive_pct": ranked(inclusive),
    }


def _in_gateway(file: str) -> bool:
    """A frame of the gateway's request path (not of its command line, which is below every sample)."""
    return "gateway/" in file and not file.endswith(("gateway/cli.py", "gateway/__main__.py"))


def _short(file: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3."):
        if marker in file:
            return file.split(marker, 1)[1]
    return file
