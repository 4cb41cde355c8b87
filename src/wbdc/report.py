"""The offline report: ``ensemble/report.md`` with PNG plots, rendered from ``ensemble/scores.json``.

One function, :func:`render_report`, draws everything from ``scores.json`` plus what it finds
on disk (every ``run_info_*.json`` under the artifact folders, the nets' gate heatmaps), so the
``blend`` stage and, once the online score is known, the ``submit`` stage produce the same
report.  An orchestrator adds its own tables through ``extra_sections`` and its stage times
simply by leaving ``run_info_*.json`` files under the root (``.pipeline/`` is searched too).

``scores.json`` layout (read by other tools; numbers rounded to 6 decimals, null = unknown)::

    {"models": {name: {<7 actions>: uAUC, "weighted": x}, ...},   # day 14, cross-fitted
     "blend": {...},                                              # day 14, held out
     "insample": {"models": {name: {...}}, "blend": {...}},       # day 14, in-sample
     "oracle": {...} | null, "online": {...} | null,
     "blend_weights": {action: {name: w}}, "blend_method": {action: "prob" | "rank" | "logit"},
     "online_source": name | null, "models_online": {name: {...}} | null,
     "stage_runtimes": {"<folder>/<stage>": {"seconds": s, "peak_rss_mb": mb}}}

Honest and in-sample day-14 figures: every choice made on day 14 (a model's iteration or
epoch, the blend's input and weights) is made on each of two seeded user halves and scored on
the other; ``models`` and ``blend`` are the means of those two out-of-half scores.  The
figures of the choices made on all day-14 users, scored on the same users, are under
``insample`` (optimistic: on a world with no signal they sit above 0.5).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from .io import atomic_path, read_json, write_json
from .paths import Paths
from .schema import ACTION_WEIGHTS, ACTIONS

SCORE_KEYS = (*ACTIONS, "weighted")
#: top-level folders searched for run_info_*.json, in pipeline order
RUN_INFO_DIRS = ("data", "features", "models", "ensemble", "submissions", ".pipeline")
PLOT_SCORES = "uauc_by_model.png"
PLOT_WEIGHTS = "blend_weights.png"
SCORES_HINT = "run the blend stage first (src/stages/blend.py)"


# ------------------------------------------------------------------------------ scores.json

def rounded(scores: Mapping[str, float] | None, decimals: int = 6) -> dict | None:
    """Scores in SCORE_KEYS order, rounded like the official scorer; NaN/missing -> None."""
    if scores is None:
        return None
    out = {}
    for k in SCORE_KEYS:
        v = scores.get(k)
        out[k] = None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), decimals)
    return out


def empty_scores() -> dict:
    return {"models": {}, "blend": None, "insample": {"models": {}, "blend": None},
            "oracle": None, "online": None,
            "blend_weights": {}, "blend_method": {}, "online_source": None,
            "models_online": None, "stage_runtimes": {}}


def read_scores(paths: Paths) -> dict:
    f = paths.ensemble / "scores.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: missing; {SCORES_HINT}")
    return {**empty_scores(), **read_json(f)}


# ------------------------------------------------------------------------------ run infos

def collect_run_infos(root: str | Path) -> list[dict]:
    """Every ``run_info_*.json`` under the root's artifact folders, oldest first.

    Each item: folder (relative to the root), stage, seconds, peak_rss_mb.  Files in hidden
    temporary folders (an atomic write in progress) are ignored; unreadable ones too.
    """
    root = Path(root)
    found = []
    for top in RUN_INFO_DIRS:
        base = root / top
        if not base.is_dir():
            continue
        for f in base.rglob("run_info_*.json"):
            rel = f.relative_to(root)
            if any(part.startswith(".") for part in rel.parts[1:-1]):
                continue
            try:
                info = json.loads(f.read_text())
                mtime = f.stat().st_mtime
            except (OSError, ValueError):
                continue
            found.append((mtime, str(rel.parent), {
                "folder": str(rel.parent),
                "stage": str(info.get("stage", f.stem[len("run_info_"):])),
                "seconds": float(info.get("seconds", float("nan"))),
                "peak_rss_mb": float(info.get("peak_rss_mb", float("nan"))),
            }))
    found.sort(key=lambda t: (t[0], t[1]))
    return [t[2] for t in found]


def runtimes_dict(infos: list[dict]) -> dict:
    return {f"{i['folder']}/{i['stage']}": {"seconds": i["seconds"], "peak_rss_mb": i["peak_rss_mb"]}
            for i in infos}


# ------------------------------------------------------------------------------ plots

def _offline_rows(scores: Mapping) -> list[tuple[str, dict]]:
    """The honest day-14 rows: every model (cross-fitted), the held-out blend, the oracle."""
    rows = [(name, s) for name, s in (scores.get("models") or {}).items() if s]
    for key in ("blend", "oracle"):
        if scores.get(key):
            rows.append((key, scores[key]))
    return rows


def _insample_rows(scores: Mapping) -> list[tuple[str, dict]]:
    ins = scores.get("insample") or {}
    rows = [(f"insample:{name}", s) for name, s in (ins.get("models") or {}).items() if s]
    if ins.get("blend"):
        rows.append(("insample:blend", ins["blend"]))
    return rows


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")


def plot_scores(scores: Mapping, path: str | Path) -> Path | None:
    """Grouped bars: day-14 uAUC per action (and weighted) of every model and the blend (honest,
    cross-fitted), the in-sample blend (hatched) and the oracle."""
    rows = _offline_rows(scores)
    ins = [r for r in _insample_rows(scores) if r[0] == "insample:blend"]
    if rows and ins:
        rows.insert(len(rows) - (1 if scores.get("oracle") else 0), ins[0])
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(SCORE_KEYS))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(SCORE_KEYS)), 4.2))
    vals_all = []
    for i, (name, s) in enumerate(rows):
        vals = np.array([np.nan if s.get(k) is None else s[k] for k in SCORE_KEYS], float)
        vals_all.append(vals)
        hatch = "//" if name.startswith("insample:") else None
        ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=name, hatch=hatch)
    v = np.concatenate(vals_all)
    v = v[~np.isnan(v)]
    if len(v):
        ax.set_ylim(max(0.0, v.min() - 0.03), min(1.0, v.max() + 0.02))
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, [f"{k}\n(w={ACTION_WEIGHTS[k]:g})" if k in ACTION_WEIGHTS else k
                      for k in SCORE_KEYS], fontsize=8)
    ax.set_ylabel("day-14 uAUC")
    ax.set_title("Offline uAUC per action")
    ax.legend(fontsize=8, ncol=min(len(rows), 4), loc="upper left")
    path = Path(path)
    _savefig(fig, path)
    plt.close(fig)
    return path


def plot_weights(scores: Mapping, path: str | Path) -> Path | None:
    """Stacked horizontal bars: each action's blend weights, labelled with the input used."""
    weights = scores.get("blend_weights") or {}
    if not weights:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    actions = [a for a in ACTIONS if a in weights]
    models = list(dict.fromkeys(m for a in actions for m in weights[a]))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(actions) + 1.5))
    left = np.zeros(len(actions))
    for m in models:
        w = np.array([weights[a].get(m, 0.0) for a in actions])
        ax.barh(actions, w, left=left, label=m)
        left += w
    method = scores.get("blend_method") or {}
    for i, a in enumerate(actions):
        ax.text(1.01, i, method.get(a, ""), va="center", fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.invert_yaxis()
    ax.set_xlabel("weight")
    ax.set_title("Blend weights per action (input: prob or per-user rank)")
    ax.legend(fontsize=8, ncol=min(len(models), 5), loc="lower center",
              bbox_to_anchor=(0.5, 1.08))
    path = Path(path)
    _savefig(fig, path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ markdown

def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


def score_table(rows: list[tuple[str, Mapping]]) -> list[str]:
    lines = ["| row | " + " | ".join(SCORE_KEYS) + " |",
             "|---|" + "---:|" * len(SCORE_KEYS)]
    for name, s in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(s.get(k)) for k in SCORE_KEYS) + " |")
    return lines


def _data_line(paths: Paths) -> str:
    meta_f = paths.prepared / "meta.json"
    if not meta_f.is_file():
        return "Data: unknown (no data/prepared/meta.json)."
    meta = read_json(meta_f)
    kind = "synthetic world" if meta.get("synthetic") else "real data"
    count = lambda k: f"{meta[k]:,}" if isinstance(meta.get(k), int) else "?"  # noqa: E731
    return (f"Data: {kind} from `{meta.get('source_dir', '?')}` ({count('n_actions')} action "
            f"rows, {count('n_test')} test rows from {meta.get('test_file', '?')}).")


def render_report(paths: Paths, extra_sections: Mapping[str, str] | None = None) -> Path:
    """Refresh ``stage_runtimes`` in ``ensemble/scores.json``, draw the plots and write
    ``ensemble/report.md``; returns the report's path."""
    out = paths.ensemble
    scores = read_scores(paths)
    infos = collect_run_infos(paths.root)
    scores["stage_runtimes"] = runtimes_dict(infos)
    write_json(scores, out / "scores.json")

    md = ["# WBDC 2021 offline report", "", _data_line(paths), ""]

    md += ["## Day-14 uAUC (offline, honest)", "",
           "Every choice made on day 14 is made on one seeded half of the users and scored on "
           "the other half, both ways; each figure is the mean of the two out-of-half uAUCs. "
           "Rows: each model (cross-fitted: LightGBM's iteration / a net's epoch chosen on one "
           "half, scored on the other; the popularity baseline chooses nothing); `blend` = the "
           "held-out blend (input and weights fitted on one half over the models' predictions "
           "chosen on that half, scored on the other); `oracle` = the true probabilities of "
           "the synthetic world (the ceiling).", ""]
    rows = _offline_rows(scores)
    md += score_table(rows) if rows else ["(no scores)"]
    md.append("")

    ins_rows = _insample_rows(scores)
    if ins_rows:
        md += ["## Day-14 uAUC (in-sample, optimistic)", "",
               "Chosen and scored on the same day-14 users: `insample:<model>` = the iteration / "
               "epoch chosen on all day-14 users (the one the online refit uses), "
               "`insample:blend` = the online blend's weights fitted on all day-14 users. "
               "Selection flatters these figures; report the honest ones above.", ""]
        md += score_table(ins_rows)
        md.append("")

    md += ["## Online (test day)", ""]
    online_rows = []
    if scores.get("online"):
        online_rows.append(("online", scores["online"]))
    for name, s in (scores.get("models_online") or {}).items():
        if s:
            online_rows.append((f"online:{name}", s))
    if online_rows:
        src = scores.get("online_source") or "?"
        md += [f"`online` = the written submission (source: `{src}`) scored against the "
               "synthetic world's sampled test-day labels, as the leaderboard would; "
               "`online:<model>` = each model's own test predictions.", ""]
        md += score_table(online_rows)
    else:
        md.append("No online score: the test labels are unknown (real data) or the submit "
                  "stage has not run yet.")
    md.append("")

    weights = scores.get("blend_weights") or {}
    if weights:
        method = scores.get("blend_method") or {}
        models = list(dict.fromkeys(m for a in ACTIONS if a in weights for m in weights[a]))
        md += ["## Blend weights", "",
               "Per action: the input blended (`prob` = probabilities, `rank` = per-user "
               "percentile ranks, picked by the cross-fitted score) and the weight of each model "
               "in the online blend (refitted on all day-14 users).", "",
               "| action | method | " + " | ".join(models) + " |",
               "|---|---|" + "---:|" * len(models)]
        for a in ACTIONS:
            if a in weights:
                md.append(f"| {a} | {method.get(a, '')} | "
                          + " | ".join(f"{weights[a].get(m, 0.0):.3f}" for m in models) + " |")
        md.append("")

    md += ["## Plots", ""]
    p1 = plot_scores(scores, out / PLOT_SCORES)
    p2 = plot_weights(scores, out / PLOT_WEIGHTS)
    for p, alt in ((p1, "day-14 uAUC per model"), (p2, "blend weights")):
        if p is not None:
            md += [f"![{alt}]({p.name})", ""]

    gates = sorted(paths.models.glob("*/gates*.png")) if paths.models.is_dir() else []
    if gates:
        md += ["## Gate heatmaps (multi-task nets)", "",
               "Mean gate weight per action and expert on the day-14 rows; a gate stuck on one "
               "expert or spread evenly over all of them is a collapsed mixture.", ""]
        for g in gates:
            rel = os.path.relpath(g, out)
            md += [f"### {g.parent.name}: {g.name}", "", f"![{g.parent.name} gates]({rel})", ""]

    md += ["## Stage runtimes", ""]
    if infos:
        md += ["| folder | stage | seconds | peak memory MB |", "|---|---|---:|---:|"]
        for i in infos:
            md.append(f"| {i['folder']} | {i['stage']} | {i['seconds']:.1f} | {i['peak_rss_mb']:.0f} |")
        total = sum(i["seconds"] for i in infos if not math.isnan(i["seconds"]))
        peak = max((i["peak_rss_mb"] for i in infos if not math.isnan(i["peak_rss_mb"])), default=float("nan"))
        md.append(f"| **all** | | {total:.1f} | {peak:.0f} |")
    else:
        md.append("(no run_info_*.json found)")
    md.append("")

    for title, body in (extra_sections or {}).items():
        md += [f"## {title}", "", body.rstrip(), ""]

    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(md))
    return report
