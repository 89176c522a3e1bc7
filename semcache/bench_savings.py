"""``semcache bench savings``: what the cache saves on a workload, and how often it is wrong.

For each workload, in one run:

1. the threshold: fixed by ``--threshold``, or *calibrated* on the workload's dev pairs
   to a target precision (:mod:`semcache.calibrate`; QQP on ``qqp_dev``, langcache and
   gptcache on their dev split), or else the sidecar's configured threshold;
2. the test requests are replayed through the real sidecar over HTTP in front of the fake
   upstream answering by label (:mod:`semcache.bench_replay`);
3. the policies are scored side by side (:mod:`semcache.bench_metrics`): no cache, exact
   only, static thresholds, the calibrated threshold, and a full sweep for the plots;
4. results go to ``OUT/savings.json`` and ``OUT/savings.md``, the plots to PNG files, and
   with ``--readme`` into the README's savings block (:mod:`semcache.bench_report`).
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .bench_metrics import Metrics, at_threshold, exact_only, no_cache, sweep
from .bench_prices import Tier, load_tiers
from .bench_replay import Replay, replay, running
from .bench_report import WorkloadReport, markdown_table, plot, replace_block
from .bench_workloads import (
    BUILTIN,
    Workload,
    builtin_workload,
    read_log,
    read_pairs,
    split_pairs,
)
from .calibrate import GRID, Evaluation, evaluate, pick_threshold, score_pairs
from .embedding import Embedder, load_embedder
from .settings import Settings

__all__ = ["SavingsConfig", "run_savings", "CALIBRATABLE"]

CALIBRATABLE = ("qqp", "langcache", "gptcache")
SWEEP_STEP = 0.01


@dataclass
class SavingsConfig:
    """What one ``semcache bench savings`` run does (flags of the same names)."""

    data: Path = Path("../shared/data")
    workloads: Sequence[str] = ("qqp", "langcache")
    logs: Sequence[Path] = ()
    limit: int | None = 3000
    calibration_limit: int | None = 3000
    target_precision: float | None = 0.90
    threshold: float | None = None
    static: Sequence[float] = (0.80, 0.85, 0.90, 0.95)
    floor: float = 0.50
    prices: Path | None = None
    out: Path = Path("bench/results")
    plots: Path | None = None
    readme: Path | None = None
    concurrency: int = 1
    progress: bool = True
    command: str = ""


@dataclass
class _Plan:
    workload: Workload
    threshold: float
    how: str
    dev: Evaluation | None = None
    dev_pairs: int = 0
    notes: list[str] = field(default_factory=list)
    dev_curve: list[Evaluation] = field(default_factory=list)


def _calibrate(name: str, cfg: SavingsConfig, embedder: Embedder, guard: bool
               ) -> tuple[float | None, list[Evaluation], int]:
    """(threshold, dev evaluations over the grid, dev pairs) of a built-in workload."""
    assert cfg.target_precision is not None
    if name == "qqp":
        dev = split_pairs(read_pairs(cfg.data / "qqp" / "qqp_dev.jsonl.gz"), "all", cfg.calibration_limit)
    else:
        dev = split_pairs(read_pairs(cfg.data / BUILTIN[name]), "dev", cfg.calibration_limit)
    scored = score_pairs(dev, embedder, guard=guard)  # as the sidecar under test serves
    return pick_threshold(scored, cfg.target_precision), [evaluate(scored, t) for t in GRID], len(dev)


def _plan(cfg: SavingsConfig, settings: Settings, embedder: Embedder, out: TextIO) -> list[_Plan]:
    plans: list[_Plan] = []
    for name in cfg.workloads:
        wl = builtin_workload(name, cfg.data, split="test", limit=cfg.limit)
        if cfg.threshold is not None:
            plans.append(_Plan(wl, cfg.threshold, "given"))
        elif cfg.target_precision is not None and name in CALIBRATABLE:
            print(f"{name}: calibrating on dev pairs for precision {cfg.target_precision:.2f} ...",
                  file=out, flush=True)
            t, curve, n = _calibrate(name, cfg, embedder, settings.near_miss_guard)
            if t is None:
                plans.append(_Plan(wl, settings.threshold, "default", None, n,
                                   [f"no threshold reached precision {cfg.target_precision} on dev"],
                                   curve))
            else:
                chosen = next(ev for ev in curve if ev.threshold == t)
                plans.append(_Plan(wl, t, "calibrated", chosen, n, [], curve))
        else:
            plans.append(_Plan(wl, settings.threshold, "default"))
    for path in cfg.logs:
        wl = read_log(path, limit=cfg.limit)
        plans.append(_Plan(wl, cfg.threshold if cfg.threshold is not None else settings.threshold,
                           "given" if cfg.threshold is not None else "default"))
    return plans


def _describe(p: _Plan) -> str:
    wl = p.workload
    if wl.kind == "log":
        return f"{wl.name} (log, {len(wl.queries):,} requests)"
    unit = "conversations" if wl.name == "meancache" else "pairs"
    count = len(wl.loads) // 2 if wl.name == "meancache" else len(wl.queries)
    split = " test"
    return f"{wl.name}{split}, {count:,} {unit}"


def _report(p: _Plan, rep: Replay, cfg: SavingsConfig, tiers: Sequence[Tier]) -> WorkloadReport:
    label = {"calibrated": "calibrated", "given": "chosen", "default": "sidecar default"}[p.how]
    static = [t for t in sorted(set(cfg.static)) if abs(t - p.threshold) > 1e-9]
    chosen = at_threshold(rep, p.threshold, tiers,
                          policy=f"{label} threshold {p.threshold:.3f}")
    exact = exact_only(rep, tiers)
    rows: list[Metrics] = [no_cache(rep, tiers), exact]
    rows += [at_threshold(rep, t, tiers, policy=f"static threshold {t:.2f}") for t in static]
    rows.append(chosen)
    if rep.kind == "pairs":
        steps = int(round((0.995 - rep.floor) / SWEEP_STEP)) + 1
        grid = [round(rep.floor + SWEEP_STEP * i, 4) for i in range(steps)]
    else:
        grid = sorted(set(cfg.static) | {p.threshold})
    notes = list(p.notes) + rep.notes
    if rep.lookup_timeouts or rep.lookup_failures:
        notes.append(f"{rep.lookup_timeouts} lookup timeouts, {rep.lookup_failures} lookup "
                     "failures (served uncached)")
    return WorkloadReport(p.workload.name, _describe(p), rows, sweep(rep, grid, tiers), chosen,
                          exact, notes)


async def _replay_all(plans: Sequence[_Plan], cfg: SavingsConfig, settings: Settings,
                      embedder: Embedder, out: TextIO) -> list[Replay]:
    floor = min([cfg.floor, *cfg.static, *(p.threshold for p in plans)])
    replays = []
    async with running(settings, embedder, floor) as servers:
        for p in plans:
            wl = p.workload
            print(f"{wl.name}: replaying {len(wl.requests):,} requests through the sidecar "
                  f"(threshold {p.threshold:.3f}, {p.how}) ...", file=out, flush=True)
            rep = await replay(wl, servers, floor=floor,
                               thresholds=sorted(set(cfg.static) | {p.threshold}),
                               concurrency=cfg.concurrency, progress=cfg.progress)
            print(f"{wl.name}: {rep.queries:,} queries in {rep.seconds:.0f} s", file=out,
                  flush=True)
            replays.append(rep)
    return replays


def run_savings(cfg: SavingsConfig, settings: Settings, *, embedder: Embedder | None = None,
                out: TextIO | None = None) -> list[WorkloadReport]:
    """Run the whole benchmark (module doc); returns the per-workload reports.

    Raises :class:`~semcache.bench_workloads.WorkloadError` for unreadable inputs and
    :class:`~semcache.errors.ConfigError` for a bad prices file, before any replay.
    """
    out = out or sys.stdout
    tiers = load_tiers(cfg.prices)
    if not cfg.workloads and not cfg.logs:
        raise ValueError("nothing to replay: name a --workload or a --log")
    embedder = embedder or load_embedder(
        settings.embedding_model, backend=settings.embedding_backend,
        device=settings.embedding_device, threads=settings.embedding_threads,
        cache_dir=settings.model_dir)  # the backend the sidecar would use
    plans = _plan(cfg, settings, embedder, out)
    replays = asyncio.run(_replay_all(plans, cfg, settings, embedder, out))
    reports = [_report(p, r, cfg, tiers) for p, r in zip(plans, replays, strict=True)]
    table = markdown_table(reports, tiers)

    cfg.out.mkdir(parents=True, exist_ok=True)
    plot_dir = cfg.plots or cfg.out
    pngs = plot(reports, tiers[-1], plot_dir)
    doc = _results_doc(cfg, plans, replays, reports, tiers, embedder)
    (cfg.out / "savings.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    body = _markdown(cfg, plans, reports, table, pngs, tiers, embedder)
    (cfg.out / "savings.md").write_text(body + "\n", encoding="utf-8")
    if cfg.readme is not None:
        replace_block(cfg.readme, body)
    print(table, file=out)
    for rep in reports:
        for note in rep.notes:
            print(f"note ({rep.name}): {note}", file=out)
    print(f"wrote {cfg.out / 'savings.json'}, {cfg.out / 'savings.md'}, "
          + ", ".join(str(p) for p in pngs) + (f", {cfg.readme}" if cfg.readme else ""), file=out)
    return reports


def _relative(path: Path, base: Path | None) -> str:
    if base is None:
        return str(path)
    try:
        return str(path.resolve().relative_to(base.resolve().parent))
    except ValueError:
        return str(path)


def _markdown(cfg: SavingsConfig, plans: Sequence[_Plan], reports: Sequence[WorkloadReport],
              table: str, pngs: Sequence[Path], tiers: Sequence[Tier], embedder: Embedder) -> str:
    lines = []
    if cfg.command:
        lines += [f"Produced by `{cfg.command}`.", ""]
    for p in plans:
        if p.how == "calibrated" and p.dev is not None:
            lines.append(
                f"- **{p.workload.name}**: threshold **{p.threshold:.3f}** calibrated for precision "
                f"{cfg.target_precision:.2f} on {p.dev_pairs:,} dev pairs (dev precision "
                f"{p.dev.precision:.3f}, dev hit rate {p.dev.hit_rate:.3f}); the table is the "
                "test split, which played no part in choosing it.")
        else:
            lines.append(f"- **{p.workload.name}**: threshold {p.threshold:.3f} ({p.how}).")
    prices = "; ".join(f"{t.name} ${t.input_per_m:g} in / ${t.output_per_m:g} out per 1M tokens, "
                       f"{t.ttft_s:g} s + {t.tokens_per_s:g} tokens/s" for t in tiers)
    lines += [
        f"- Embedding model {embedder.name}; {platform.machine()}, "
        f"{_cpu_count()} cores. Prices and upstream speed: {prices}.",
        "- Rows are the test queries; each pair's first text is stored first (not counted). "
        "Answers are 100-300 tokens (by label); a hit is correct only when its answer is "
        "the one the upstream gives for that query's label.",
        "",
        table,
        "",
    ]
    for rep in reports:
        for note in rep.notes:
            lines.append(f"Note ({rep.name}): {note}")
    for png in pngs:
        lines.append(f"![{png.stem}]({_relative(png, cfg.readme)})")
    return "\n".join(lines)


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def _results_doc(cfg: SavingsConfig, plans: Sequence[_Plan], replays: Sequence[Replay],
                 reports: Sequence[WorkloadReport], tiers: Sequence[Tier],
                 embedder: Embedder) -> dict[str, Any]:
    return {
        "command": cfg.command,
        "embedder": embedder.name,
        "tiers": [t.__dict__ for t in tiers],
        "workloads": [{
            "name": p.workload.name, "source": p.workload.source, "kind": p.workload.kind,
            "threshold": p.threshold, "threshold_how": p.how,
            "target_precision": cfg.target_precision if p.how == "calibrated" else None,
            "dev_pairs": p.dev_pairs,
            "dev": None if p.dev is None else {"precision": p.dev.precision,
                                               "hit_rate": p.dev.hit_rate,
                                               "recall": p.dev.recall},
            "dev_curve": [{"threshold": ev.threshold, "precision": ev.precision,
                           "hit_rate": ev.hit_rate, "recall": ev.recall} for ev in p.dev_curve],
            "loads": r.loads, "queries": r.queries, "floor": r.floor, "seconds": r.seconds,
            "upstream_calls": r.upstream_calls, "usage_mismatches": r.usage_mismatches,
            "lookup_timeouts": r.lookup_timeouts, "lookup_failures": r.lookup_failures,
            "rows": [m.as_dict() for m in rep.rows],
            "sweep": [m.as_dict() for m in rep.curve],
            "notes": rep.notes,
        } for p, r, rep in zip(plans, replays, reports, strict=True)],
    }
