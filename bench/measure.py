"""Measurement helpers shared by the service benchmarks (bench/serve.py, bench/soak.py)."""

from __future__ import annotations

from pathlib import Path


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: with 20 samples p95 is an observed latency)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MB (Linux /proc), None where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
