"""Presenting savings results: a Markdown table, PNG plots, the README block.

Plots use matplotlib's Agg backend (no display needed).  The README block is the text
between ``<!-- savings:begin -->`` and ``<!-- savings:end -->``; it is replaced whole, so
the README's numbers are always those of the last documented run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .bench_metrics import Metrics
from .bench_prices import Tier

__all__ = ["WorkloadReport", "markdown_table", "plot", "replace_block", "BEGIN", "END"]

BEGIN = "<!-- savings:begin -->"
END = "<!-- savings:end -->"


@dataclass
class WorkloadReport:
    """One workload's rows (policies in table order) and its full sweep (for plots)."""

    name: str
    description: str
    rows: list[Metrics]
    curve: list[Metrics]
    calibrated: Metrics | None = None
    exact: Metrics | None = None
    notes: list[str] = field(default_factory=list)


def _money(x: float) -> str:
    return f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


def markdown_table(reports: Sequence[WorkloadReport], tiers: Sequence[Tier]) -> str:
    """One table for all workloads; money saved per one million requests, per tier."""
    tier_names = " / ".join(t.name for t in tiers)
    head = (f"| workload | policy | hit rate | recall | precision | wrong hits / 1k req "
            f"| calls avoided | tokens saved | $ saved per 1M req ({tier_names}) "
            f"| spend saved | latency saved / req ({tiers[-1].name}) |")
    lines = [head, "|" + "---|" * 11]
    for rep in reports:
        for m in rep.rows:
            money = " / ".join(_money(m.per_million_requests(t.name)) for t in tiers)
            latency = (m.latency_saved_s.get(tiers[-1].name, 0.0) / m.requests * 1000
                       if m.requests else 0.0)
            lines.append(
                f"| {rep.description} | {m.policy} | {m.hit_rate:.1%} | {m.recall:.1%} "
                f"| {m.precision:.3f} | {m.wrong_per_1k:.1f} | {m.calls_avoided:,} "
                f"| {m.tokens_saved:,} | {money} | {m.saved_share(tiers[-1].name):.1%} "
                f"| {latency:,.0f} ms |")
    return "\n".join(lines)


def plot(reports: Sequence[WorkloadReport], tier: Tier, out: Path) -> list[Path]:
    """Two PNGs in ``out``: precision vs hit rate, and money saved (at ``tier``, per 1M
    requests) vs wrong hits per 1,000 requests; one curve per workload over the sweep,
    markers at the exact-only baseline (square) and the calibrated threshold (star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    specs = (
        ("savings-precision-hit-rate.png", "hit rate (share of requests served from cache)",
         "precision of hits", lambda m: m.hit_rate, lambda m: m.precision),
        ("savings-money-wrong-hits.png", "wrong hits per 1,000 requests",
         f"$ saved per 1M requests ({tier.name} tier)",
         lambda m: m.wrong_per_1k, lambda m: m.per_million_requests(tier.name)),
    )
    for filename, xlabel, ylabel, fx, fy in specs:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
        for rep in reports:
            if not rep.curve:
                continue
            line, = ax.plot([fx(m) for m in rep.curve], [fy(m) for m in rep.curve],
                            marker=".", markersize=3, linewidth=1.2, label=rep.description)
            for m in rep.curve:
                if m.threshold is not None and abs(m.threshold * 20 - round(m.threshold * 20)) < 1e-6:
                    ax.annotate(f"{m.threshold:.2f}", (fx(m), fy(m)), fontsize=6,
                                textcoords="offset points", xytext=(3, 3), color=line.get_color())
            if rep.exact is not None:
                ax.plot([fx(rep.exact)], [fy(rep.exact)], marker="s", color=line.get_color(),
                        linestyle="none")
            if rep.calibrated is not None:
                ax.plot([fx(rep.calibrated)], [fy(rep.calibrated)], marker="*", markersize=12,
                        color=line.get_color(), linestyle="none")
        ax.plot([], [], marker="s", color="gray", linestyle="none", label="exact only")
        ax.plot([], [], marker="*", color="gray", markersize=10, linestyle="none",
                label="calibrated threshold")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / filename
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def replace_block(readme: Path, body: str, block: str = "savings") -> None:
    """Replace the text between the ``<!-- {block}:begin -->`` and ``<!-- {block}:end -->``
    markers of ``readme`` with ``body``.

    Raises ``ValueError`` when the markers are missing (the README must name where the
    numbers go; the command never guesses)."""
    begin, end_mark = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(begin), text.find(end_mark)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no {begin} ... {end_mark} block")
    readme.write_text(text[: start + len(begin)] + "\n" + body.strip() + "\n" + text[end:],
                      encoding="utf-8")
