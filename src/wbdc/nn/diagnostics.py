"""Gate diagnostics: how much weight each action's gate puts on each expert, on given rows.

A gate that puts (nearly) all its weight on one expert, or identical weights everywhere, is the
usual sign of a collapsed or unused mixture; the heatmap shows it at a glance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..io import atomic_path, write_csv
from ..schema import ACTIONS
from .data import EncodedArrays, StreamedRows
from .models import gate_levels
from .trainer import model_device, to_device


@torch.no_grad()
def gate_means(model: nn.Module, data: EncodedArrays | StreamedRows, batch_size: int = 16384,
               actions: Sequence[str] = ACTIONS, max_rows: int | None = None) -> pd.DataFrame:
    """Mean task-gate weight per (level, action, expert slot) over the rows of ``data`` (its
    first batches holding ``max_rows`` rows, when given: a diagnostic needs no full pass over a
    day of millions of rows).  ``attrs["rows"]``: the rows averaged.

    One row per level and action; columns ``level``, ``action`` and the slots of
    ``CGCLevel.expert_names()`` (own experts first, then shared ones).  Empty for models
    without gates (Shared-Bottom).
    """
    levels = gate_levels(model)
    if not levels:
        return pd.DataFrame(columns=["level", "action"])
    sums = [torch.zeros(lv.n_tasks, lv.n_specific + lv.n_shared, dtype=torch.float64)
            for lv in levels]
    model.eval()
    for lv in levels:
        lv.keep_gates = True
    seen = 0
    try:
        for _, batch in data.ordered_batches(batch_size):
            if max_rows is not None and seen >= max_rows:
                break
            model(to_device(batch, model_device(model)))
            for s, lv in zip(sums, levels):
                s += lv.last_gates.double().sum(0).cpu()
            seen += int(levels[0].last_gates.shape[0])
    finally:
        for lv in levels:
            lv.keep_gates = False
            lv.last_gates = lv.last_shared_gate = None
    frames = []
    for i, (s, lv) in enumerate(zip(sums, levels)):
        f = pd.DataFrame((s / max(seen, 1)).numpy(), columns=lv.expert_names())
        f.insert(0, "action", list(actions)[: lv.n_tasks])
        f.insert(0, "level", i + 1)
        frames.append(f)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["rows"] = seen
    return out


def plot_gate_heatmap(gates: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """One heatmap per level (actions x experts), annotated with the mean weights."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(gates["level"].unique())
    slots = [c for c in gates.columns if c not in ("level", "action")]
    fig, axes = plt.subplots(1, len(levels), figsize=(1.1 * len(slots) * len(levels) + 2.5, 4.2),
                             squeeze=False)
    for ax, level in zip(axes[0], levels):
        g = gates[gates["level"] == level]
        m = g[slots].to_numpy(float)
        im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=max(float(m.max()), 1e-9), aspect="auto")
        ax.set_xticks(range(len(slots)), [s.replace("_expert_", " ") for s in slots],
                      rotation=45, ha="right")
        ax.set_yticks(range(len(g)), g["action"].tolist())
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 * m.max() else "black")
        last = " (last)" if level == levels[-1] and len(levels) > 1 else ""
        ax.set_title(f"level {level}{last}" if len(levels) > 1 else ("" if title else "mean gate weight"))
        fig.colorbar(im, ax=ax, fraction=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_gate_diagnostics(gates: pd.DataFrame, out_dir: str | Path, title: str = "") -> list[Path]:
    """``gates.csv`` and ``gates.png`` in ``out_dir``; nothing for a gate-less model."""
    if gates.empty:
        return []
    out_dir = Path(out_dir)
    csv, png = out_dir / "gates.csv", out_dir / "gates.png"
    write_csv(gates, csv, float_format="%.6f")
    plot_gate_heatmap(gates, png, title)
    return [csv, png]
