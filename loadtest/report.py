"""Figures and the PNG plot of ``illustrator loadtest`` (see the loadtest package).

Percentiles of raw samples, quantiles of the server's Prometheus ack-latency histogram
(interpolated within buckets, as Prometheus' ``histogram_quantile`` does), and a plot
drawn with Pillow: latency over time on top, the two latency histograms below.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

ACK_METRIC = "illustrator_persistence_ack_latency_seconds"
CHECKPOINTS_METRIC = "illustrator_persistence_checkpoints_total"
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)$")


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile; None without samples."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, Any]:
    """count, p50, p95, p99, max (ms)."""
    return {
        "count": len(values),
        "p50": percentile(values, 0.50),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else None,
    }


def parse_metrics(text: str) -> dict[str, Any]:
    """The ack histogram (bounds in ms -> cumulative count) and the checkpoint counter."""
    buckets: dict[float, float] = {}
    checkpoints = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        name, labels, value = match.groups()
        if name == f"{ACK_METRIC}_bucket":
            bound = re.search(r'le="([^"]+)"', labels or "")
            if bound:
                seconds = float(bound.group(1))  # "+Inf" parses as inf
                buckets[seconds * 1000] = float(value)
        elif name == CHECKPOINTS_METRIC:
            checkpoints = float(value)
    if not buckets:
        raise ValueError(f"no {ACK_METRIC} histogram in /metrics")
    return {"buckets": dict(sorted(buckets.items())), "checkpoints": checkpoints}


def bucket_delta(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    """Cumulative counts observed between two scrapes."""
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def histogram_quantile(cumulative: dict[float, float], share: float) -> float | None:
    """Quantile (ms) of a cumulative histogram, linear within the bucket; None if empty."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0
    if total <= 0:
        return None
    rank = share * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the largest finite bucket: its bound is all we know
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def histogram_summary(cumulative: dict[float, float]) -> dict[str, Any]:
    """count and p50/p95/p99 (ms) of a cumulative histogram."""
    bounds = sorted(cumulative)
    return {
        "count": int(cumulative[bounds[-1]]) if bounds else 0,
        "p50": histogram_quantile(cumulative, 0.50),
        "p95": histogram_quantile(cumulative, 0.95),
        "p99": histogram_quantile(cumulative, 0.99),
    }


def write_report(
    args: argparse.Namespace,
    base: str,
    tracker: Any,
    wall: float,
    stopped_by: str,
    integrity: dict[str, Any],
    cleanup: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the report from what the drivers saw, write it as JSON and PNG; return it."""
    first, last = tracker.scrapes[0][1], tracker.scrapes[-1][1]
    ack = bucket_delta(first["buckets"], last["buckets"])
    checkpoints = last["checkpoints"] - first["checkpoints"]
    declared, observed = args.provider_latency, percentile(tracker.analyze_ms, 0.5)
    warnings = _provider_warnings(declared, observed)
    delivery = [ms for _, ms in tracker.delivery]
    report: dict[str, Any] = {
        "url": base,
        "finished_at": datetime.now().astimezone().isoformat(),
        "stopped_by": stopped_by,
        "options": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("token", "handler", "config", "verbose", "command")
        },
        "duration_seconds": wall,
        "sessions": _session_counts(args.sessions, tracker),
        "checkpoints": {
            "count": int(checkpoints),
            "per_second": checkpoints / wall if wall > 0 else 0.0,
        },
        "ack_latency_ms": {
            **histogram_summary(ack),
            "source": "server /metrics histogram delta",
            "buckets": {f"{b:g}": c for b, c in ack.items()},
        },
        "event_delivery_ms": summary(delivery),
        "provider_latency": {
            "declared_ms": declared,
            "analysis_step_median_ms": observed,
            "analysis_steps_measured": len(tracker.analyze_ms),
        },
        "errors": {"count": len(tracker.errors), "examples": tracker.errors[:20]},
        "warnings": warnings,
        "integrity": integrity,
        "cleanup": cleanup,
        "timeline": _timeline(tracker),
    }
    report["verdict"] = verdict(report)
    _save(report, delivery, args.report.resolve())
    for text in warnings:
        print(f"WARNING: {text}", file=sys.stderr)
    return report


def _timeline(tracker: Any) -> list[dict[str, Any]]:
    """Per interval between two scrapes: checkpoint rate, ack and event latency."""
    timeline = []
    for (t0, a), (t1, b) in zip(tracker.scrapes, tracker.scrapes[1:], strict=False):
        window = bucket_delta(a["buckets"], b["buckets"])
        events = [ms for t, ms in tracker.delivery if t0 < t <= t1]
        timeline.append(
            {
                "t": round(t1, 2),
                "checkpoints_per_second": (b["checkpoints"] - a["checkpoints"])
                / max(t1 - t0, 1e-9),
                "ack_p50_ms": histogram_quantile(window, 0.5),
                "ack_p99_ms": histogram_quantile(window, 0.99),
                "event_p50_ms": percentile(events, 0.5),
                "event_p99_ms": percentile(events, 0.99),
            }
        )
    return timeline


def _provider_warnings(declared: int | None, observed: float | None) -> list[str]:
    """A warning when the server's steps were faster than the latency the run declared."""
    if declared and observed is not None and observed < 0.8 * declared:
        return [
            f"analysis steps took {observed:.0f} ms (median), less than --provider-latency "
            f"{declared} ms: start the server with"
            f" ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS={declared}"
        ]
    return []


def _session_counts(requested: int, tracker: Any) -> dict[str, Any]:
    """How many sessions were started, completed, paused and resumed, failed, unfinished."""
    sessions = tracker.sessions.values()
    return {
        "requested": requested,
        "started": len(tracker.sessions),
        "completed": tracker.count("completed"),
        "paused_and_resumed": sum(1 for s in sessions if s["paused"]),
        "pause_too_late": sum(1 for s in sessions if s["pause"] == "too late"),
        "failed": sum(1 for s in sessions if s["status"] not in ("completed", "running")),
        "unfinished": tracker.count("running"),
    }


def _save(report: dict[str, Any], delivery: list[float], json_path: Path) -> None:
    """Write the report as JSON and its plot as PNG beside it (their paths go in the report)."""
    png_path = json_path.with_suffix(".png")
    report.update(report_json=str(json_path), report_png=str(png_path))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    write_plot(report, delivery, png_path)


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """PASS only when every session completed, integrity held, there were no errors and,
    if asked for, the clean-up removed everything; otherwise FAIL with the reasons."""
    s = report["sessions"]
    reasons = []
    if s["completed"] != s["requested"]:
        reasons.append(f"{s['completed']} of {s['requested']} sessions completed")
    if not report["integrity"]["ok"]:
        reasons.append(f"integrity: {report['integrity']['problem_count']} problems")
    if report["errors"]["count"]:
        reasons.append(f"{report['errors']['count']} errors")
    cleanup = report.get("cleanup")
    if cleanup is not None and not cleanup["ok"]:
        reasons.append(f"cleanup: {len(cleanup['problems'])} problems")
    return {"pass": not reasons, "reasons": reasons}


# --------------------------------------------------------------------------- the plot

W, H, PAD = 1200, 820, 60
COLORS = {
    "ack p50": (31, 119, 180),
    "ack p99": (174, 199, 232),
    "event p50": (214, 39, 40),
    "event p99": (255, 152, 150),
}


def _axes(
    draw: Any,
    box: tuple[int, int, int, int],
    title: str,
    x_label: str,
    y_max: float,
    x_max: float,
    font: Any,
) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((left, top - 18), title, fill=(0, 0, 0), font=font)
    if y_max <= 0:  # a histogram: its bars carry their own labels
        return
    draw.text((left, top - 18), title, fill=(0, 0, 0), font=font)
    draw.text((right - 6 * len(x_label), bottom + 18), x_label, fill=(60, 60, 60), font=font)
    for i in range(5):
        y = bottom - (bottom - top) * i / 4
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.text((4, y - 6), f"{y_max * i / 4:.4g}", fill=(60, 60, 60), font=font)
        x = left + (right - left) * i / 4
        draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
        draw.text((x - 10, bottom + 6), f"{x_max * i / 4:.3g}", fill=(60, 60, 60), font=font)


def _bars(
    draw: Any,
    box: tuple[int, int, int, int],
    counts: list[float],
    labels: list[str],
    color: tuple[int, int, int],
    font: Any,
) -> None:
    left, top, right, bottom = box
    peak = max(counts) if counts and max(counts) > 0 else 1
    width = (right - left) / max(1, len(counts))
    for i, count in enumerate(counts):
        x0 = left + i * width
        draw.rectangle(
            (x0 + 1, bottom - (bottom - top) * count / peak, x0 + width - 1, bottom), fill=color
        )
        if len(counts) <= 16 or i % max(1, len(counts) // 8) == 0:
            draw.text((x0 + 2, bottom + 4), labels[i], fill=(60, 60, 60), font=font)
    draw.text((left + 4, top + 4), f"max count {peak:.0f}", fill=(60, 60, 60), font=font)


def write_plot(report: dict[str, Any], delivery_samples: list[float], path: Path) -> None:
    """Latency over time (ack and event delivery p50/p99 per interval) and both histograms."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text(
        (PAD, 8),
        f"illustrator loadtest {report['url']}: {report['sessions']['requested']} "
        f"sessions, {report['checkpoints']['per_second']:.0f} checkpoints/s",
        fill=(0, 0, 0),
        font=font,
    )
    _plot_timeline(draw, report["timeline"], font)
    _plot_delivery_histogram(draw, delivery_samples, font)
    _plot_ack_histogram(draw, report["ack_latency_ms"].get("buckets") or {}, font)
    image.save(path, format="PNG")


def _plot_timeline(draw: Any, timeline: list[dict[str, Any]], font: Any) -> None:
    """Top: ack and event delivery p50/p99 per scrape interval, one line each."""
    series = {
        "ack p50": [(p["t"], p.get("ack_p50_ms")) for p in timeline],
        "ack p99": [(p["t"], p.get("ack_p99_ms")) for p in timeline],
        "event p50": [(p["t"], p.get("event_p50_ms")) for p in timeline],
        "event p99": [(p["t"], p.get("event_p99_ms")) for p in timeline],
    }
    values = [v for points in series.values() for _, v in points if v is not None]
    y_max = max(values, default=1.0) * 1.1 or 1.0
    x_max = max((p["t"] for p in timeline), default=1.0) or 1.0
    top = (PAD + 10, 50, W - 20, 400)
    _axes(draw, top, "latency over time (ms; per scrape interval)", "seconds", y_max, x_max, font)
    left, upper, right, bottom = top
    for i, (name, points) in enumerate(series.items()):
        xy = [
            (left + (right - left) * t / x_max, bottom - (bottom - upper) * v / y_max)
            for t, v in points
            if v is not None
        ]
        if len(xy) > 1:
            draw.line(xy, fill=COLORS[name], width=2)
        for x, y in xy:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=COLORS[name])
        draw.rectangle(
            (right - 110, upper + 8 + 16 * i, right - 98, upper + 18 + 16 * i), fill=COLORS[name]
        )
        draw.text((right - 92, upper + 6 + 16 * i), name, fill=(0, 0, 0), font=font)


def _plot_delivery_histogram(draw: Any, delivery_samples: list[float], font: Any) -> None:
    """Bottom left: event delivery latency in 30 bins up to its 99.9th percentile."""
    low = (PAD + 10, 480, W // 2 - 30, 770)
    _axes(
        draw,
        low,
        "event delivery latency histogram (frame timestamp -> received)",
        "ms",
        0,
        0,
        font,
    )
    if not delivery_samples:
        return
    high = percentile(delivery_samples, 0.999) or 1.0
    bins = 30
    counts = [0.0] * bins
    for v in delivery_samples:
        counts[min(bins - 1, int(bins * v / high)) if high > 0 else 0] += 1
    _bars(
        draw,
        low,
        counts,
        [f"{high * i / bins:.0f}" for i in range(bins)],
        COLORS["event p50"],
        font,
    )


def _plot_ack_histogram(draw: Any, ack: dict[str, float], font: Any) -> None:
    """Bottom right: checkpoint ack latency by the server's histogram buckets."""
    bounds = sorted(ack, key=lambda b: float(b))
    cumulative = [ack[b] for b in bounds]
    per_bucket = [c - (cumulative[i - 1] if i else 0) for i, c in enumerate(cumulative)]
    box = (W // 2 + 30, 480, W - 20, 770)
    _axes(
        draw,
        box,
        "checkpoint ack latency (server /metrics buckets, upper bound ms)",
        "ms",
        0,
        0,
        font,
    )
    _bars(
        draw,
        box,
        per_bucket,
        [b if b != "inf" else "+Inf" for b in bounds],
        COLORS["ack p50"],
        font,
    )
