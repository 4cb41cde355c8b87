"""The run's closing table: stage times and memory, and day-14 / online scores when known."""
from __future__ import annotations

import json

from .io import atomic_path
from .paths import Paths
from .report import collect_run_infos

SECTION = "## Pipeline summary"


def _fmt(sc: dict) -> str:
    v = sc.get("weighted")
    return "n/a" if v is None else f"{v:.6f}"


def summary_lines(paths: Paths, total_seconds: float | None = None,
                  folders: set[str] | None = None) -> list[str]:
    """``folders``: the artifact folders (relative to the root) of this run's stages; others
    under the root (another synthetic world, a model not in this run) are left out."""
    lines = [SECTION, "", "| stage | artifacts | seconds | peak memory (MB) |", "|---|---|---:|---:|"]
    for r in collect_run_infos(paths.root):       # oldest first: the order the stages ran
        if folders is not None and r["folder"] not in folders:
            continue
        lines.append(f"| {r['stage']} | {r['folder']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    if total_seconds is not None:
        lines.append(f"| **whole run (this invocation)** | | {total_seconds:.0f} | |")
    scores_path = paths.ensemble / "scores.json"
    if scores_path.exists():
        s = json.loads(scores_path.read_text())
        lines += ["", "| model | day-14 weighted uAUC (honest: chosen on one user half, scored on "
                  "the other) |", "|---|---:|"]
        for name, sc in (s.get("models") or {}).items():
            lines.append(f"| {name} | {_fmt(sc)} |")
        ins = (s.get("insample") or {}).get("blend")
        for label, sc in (("blend (held out)", s.get("blend")),
                          ("blend in-sample (optimistic, not a score)", ins),
                          ("oracle (true probabilities)", s.get("oracle")),
                          ("online: submission on day 15", s.get("online"))):
            if sc:
                lines.append(f"| {label} | {_fmt(sc)} |")
    return lines


def write_summary(paths: Paths, total_seconds: float | None = None,
                  folders: set[str] | None = None) -> str:
    """Print-ready summary; also replaces the summary section of ensemble/report.md if present."""
    lines = summary_lines(paths, total_seconds, folders)
    text = "\n".join(lines) + "\n"
    report = paths.ensemble / "report.md"
    if report.exists():
        body = report.read_text()
        if SECTION in body:
            body = body[: body.index(SECTION)].rstrip() + "\n\n"
        else:
            body = body.rstrip() + "\n\n"
        with atomic_path(report) as tmp:
            tmp.write_text(body + text)
    return text
