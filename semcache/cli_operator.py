"""Operator commands of the ``semcache`` CLI, talking to a running sidecar over HTTP.

``semcache stats``       what the cache holds, hit rate, tokens and dollars spent and saved
``semcache invalidate``  drop entries by namespace, id, or query text + threshold
``semcache export``      the entries as JSONL (to a file or stdout)
``semcache import``      a JSONL export into a sidecar (re-embedded there)

The sidecar is found at ``--url``, else at ``http://<host>:<port>`` of the settings (a
wildcard host means this machine); the admin token comes from ``--admin-token`` /
``SEMCACHE_ADMIN_TOKEN``.  Long runs show a progress bar (``tqdm``) on a terminal, or
when ``--progress`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from .client import Client, Stats, check_export
from .settings import Settings, add_arguments

__all__ = ["add_operator_commands", "run_operator_command", "COMMANDS"]

COMMANDS = ("stats", "invalidate", "export", "import")


def add_operator_commands(sub: Any) -> None:
    """Add the operator subcommands to ``sub`` (an argparse subparsers object)."""
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="base URL of the sidecar (default http://HOST:PORT)")
        add_arguments(p, ["host", "port", "admin_token"])

    def progress(p: argparse.ArgumentParser) -> None:
        p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show a progress bar (default: when stderr is a terminal)")

    p = sub.add_parser("stats", help="entries, hit rate, tokens and money spent and saved")
    common(p)
    p.add_argument("--namespace", help="only this namespace (name or ns:/key: form)")
    p.add_argument("--json", action="store_true", help="print the raw JSON document")

    p = sub.add_parser("invalidate", help="drop entries by namespace, id, or query + threshold")
    common(p)
    p.add_argument("--namespace", help="entries of this namespace")
    p.add_argument("--entry", dest="entry_ids", type=int, action="append", metavar="ID",
                   help="this entry id (repeatable)")
    p.add_argument("--query", help="entries whose text means the same as this text")
    p.add_argument("--min-similarity", dest="min_similarity", type=float, metavar="F",
                   help="similarity at or above which --query matches (default: the server's threshold)")
    p.add_argument("--model", dest="entry_model", help="only entries of this model")
    p.add_argument("--endpoint", dest="entry_endpoint", help="only entries of this endpoint")
    p.add_argument("--all", dest="everything", action="store_true", help="every entry")
    p.add_argument("--dry-run", action="store_true", help="list what would be dropped")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")

    p = sub.add_parser("export", help="write the entries as JSONL")
    common(p)
    progress(p)
    p.add_argument("--namespace", help="only this namespace")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")

    p = sub.add_parser("import", help="load a JSONL export into the sidecar")
    common(p)
    progress(p)
    p.add_argument("file", help="a file written by 'semcache export'")
    p.add_argument("--batch-size", type=int, default=500, help="entries per request")


def _client(args: argparse.Namespace, settings: Settings) -> Client:
    url = args.url
    if not url:
        host = settings.host
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        url = f"http://{host}:{settings.port}"
    return Client(url, settings.admin_token)


def _bar(enabled: bool | None, total: int | None, unit: str) -> Any:
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)


def run_operator_command(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    """Run one operator command; returns the exit status.  Errors propagate as
    :class:`SemcacheError` (the CLI prints them) or ``OSError`` (server unreachable)."""
    out = out or sys.stdout
    client = _client(args, settings)
    if args.command == "stats":
        stats = client.stats(args.namespace)
        if args.json:
            print(json.dumps(stats.raw, indent=2), file=out)
        else:
            print(_render_stats(stats), file=out)
        return 0
    if args.command == "invalidate":
        result = client.invalidate(
            namespace=args.namespace, entry_ids=args.entry_ids, query=args.query,
            threshold=args.min_similarity, model=args.entry_model, endpoint=args.entry_endpoint,
            all=args.everything, dry_run=args.dry_run)
        if args.json:
            print(json.dumps({"dry_run": result.dry_run, "matched": result.matched,
                              "deleted": result.deleted, "ids": result.ids}), file=out)
        else:
            for e in result.entries:
                sim = f"{e.similarity:.4f}" if e.similarity is not None else "-"
                print(f"{e.id:>8}  {sim:>6}  {e.namespace}  {e.model}  {(e.text or '')[:60]}", file=out)
            verb = "would drop" if result.dry_run else "dropped"
            print(f"{verb} {result.matched if result.dry_run else result.deleted} entries", file=out)
        return 0
    if args.command == "export":
        return _export(client, args, out)
    if args.command == "import":
        return _import(client, args, out)
    raise AssertionError(args.command)  # pragma: no cover


def _export(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    target: TextIO = open(args.output, "w", encoding="utf-8") if args.output else out  # noqa: SIM115
    bar = None
    written = 0
    try:
        for number, line in enumerate(client.export_lines(args.namespace)):
            if number == 0:
                try:
                    total = json.loads(line).get("count")
                except ValueError:
                    total = None
                bar = _bar(args.progress, total, "entries")
            else:
                written += 1
                if bar is not None:
                    bar.update(1)
            target.write(line)
    finally:
        if bar is not None:
            bar.close()
        if args.output:
            target.close()
    if args.output:
        print(f"exported {written} entries to {args.output}", file=sys.stderr)
    return 0


def _import(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    with open(args.file, encoding="utf-8") as f:
        _, entries = check_export(f)  # refuse a bad file before sending anything
    bar = _bar(args.progress, len(entries), "entries")
    try:
        result = client.import_file(args.file, batch_size=max(1, args.batch_size),
                                    on_batch=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    print(f"imported {result.imported} of {result.entries} entries"
          f" ({result.expired} expired, {result.skipped_foreign_keys} of API-key namespaces skipped"
          f"{', namespace salt adopted' if result.salt_adopted else ''})", file=out)
    return 0


def _render_stats(s: Stats) -> str:
    t = s.totals
    lines = [f"semcache {s.version}  ready={s.ready}" + (f"  namespace={s.namespace}" if s.namespace else "")]
    if s.cache is not None:
        c = s.cache
        lines.append(f"entries {c.get('entries', 0)}  scopes {c.get('scopes', 0)}  payload "
                     f"{c.get('payload_bytes', 0)} B  file {c.get('file_bytes', 0)} B  evictions "
                     f"{c.get('evictions', 0)}  expirations {c.get('expirations', 0)}")
    requests = t.get("requests", 0) or 0
    rate = (t.get("hits", 0) / requests * 100) if requests else 0.0
    lines.append(f"requests {int(requests)}  hits {int(t.get('hits', 0))} ({rate:.1f}%)  upstream calls "
                 f"{int(t.get('upstream_calls', 0))}  errors {int(t.get('upstream_errors', 0))}  "
                 f"refused {int(t.get('budget_refusals', 0))}")
    lines.append(f"spent ${t.get('spent_usd', 0):.4f} ({int(t.get('prompt_tokens', 0))} + "
                 f"{int(t.get('completion_tokens', 0))} tokens)  saved ${t.get('saved_usd', 0):.4f} "
                 f"({int(t.get('saved_prompt_tokens', 0))} + {int(t.get('saved_completion_tokens', 0))} "
                 f"tokens)  feedback wrong {s.feedback_wrong} / right {s.feedback_correct}")
    if s.rows:
        lines.append("")
        lines.append(f"{'namespace':<40} {'model':<24} {'requests':>8} {'hits':>6} "
                     f"{'spent $':>10} {'saved $':>10}")
        for r in s.rows:
            lines.append(f"{r.namespace[:40]:<40} {r.model[:24]:<24} {r.requests:>8} {r.hits:>6} "
                         f"{r.spent_usd:>10.4f} {r.saved_usd:>10.4f}")
    if s.budgets:
        lines.append("")
        for b in s.budgets:
            unit = "$" if b.kind == "usd" else ""
            lines.append(f"budget {b.namespace}: {unit}{b.used:g} of {unit}{b.limit:g} {b.kind} today"
                         + ("  EXCEEDED" if b.exceeded else ""))
    return "\n".join(lines)
