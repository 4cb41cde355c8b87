"""The run's closing table: stage times and memory, and day-14 / online scores when known."""
from __future__ import annotations

import json
from pathlib import Path

from .io import atomic_path
from .paths import Paths

STAGE_ORDER = ("make_synthetic", "prepare", "features", "lgb", "sb", "mmoe", "ple", "blend", "submit")
SECTION = "## Pipeline summary"


def collect_run_infos(paths: Paths) -> list[dict]:
    """Every run_info_<stage>.json under the artifact folders, in pipeline order."""
    found = []
    for folder in (paths.data, paths.features, paths.models, paths.ensemble, paths.submissions):
        if folder.exists():
            found.extend(json.loads(p.read_text()) | {"_path": str(p)} for p in folder.rglob("run_info_*.json"))

    def order(r: dict) -> tuple:
        name = r.get("stage", "")
        base = name.split(":")[0].replace("train_nn_", "").replace("train_", "")
        return (STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER), name)
    return sorted(found, key=order)


def summary_lines(paths: Paths, total_seconds: float | None = None) -> list[str]:
    lines = [SECTION, "", "| stage | seconds | peak memory (MB) |", "|---|---:|---:|"]
    for r in collect_run_infos(paths):
        lines.append(f"| {r.get('stage')} | {r.get('seconds', float('nan')):.1f} | {r.get('peak_rss_mb', float('nan')):.0f} |")
    if total_seconds is not None:
        lines.append(f"| **whole run (this invocation)** | {total_seconds:.0f} | |")
    scores_path = paths.ensemble / "scores.json"
    if scores_path.exists():
        s = json.loads(scores_path.read_text())
        lines += ["", "| model | day-14 weighted uAUC |", "|---|---:|"]
        for name, sc in (s.get("models") or {}).items():
            lines.append(f"| {name} | {sc['weighted']:.6f} |")
        for key, label in (("blend", "blend (in-sample)"), ("blend_heldout", "blend (held-out halves)"),
                           ("oracle", "oracle (true probabilities)"), ("online", "online: submission on day 15")):
            if s.get(key):
                lines.append(f"| {label} | {s[key]['weighted']:.6f} |")
    return lines


def write_summary(paths: Paths, total_seconds: float | None = None) -> str:
    """Print-ready summary; also replaces the summary section of ensemble/report.md if present."""
    lines = summary_lines(paths, total_seconds)
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
