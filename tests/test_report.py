"""Report: report.md numbers equal scores.json, plots, gate heatmaps, stage runtimes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from wbdc.io import write_json
from wbdc.paths import Paths
from wbdc.report import SCORE_KEYS, collect_run_infos, empty_scores, render_report
from wbdc.schema import ACTIONS

from conftest import run_stage
from test_blend import make_world, standard_models, write_root

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HONEST = "Day-14 uAUC (offline, honest)"
INSAMPLE = "Day-14 uAUC (in-sample, optimistic)"


def parse_tables(md: str) -> dict[str, dict[str, list[str]]]:
    """{section title: {first cell: other cells}} for every markdown table (header skipped)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    rows: list[list[str]] = []
    for line in md.splitlines() + [""]:
        if line.startswith("## "):
            section = line[3:].strip()
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            out.setdefault(section, {}).update({r[0]: r[1:] for r in rows[2:]})
            rows = []
    return out


def _score_row(cells: list[str]) -> dict:
    return {k: (None if v == "n/a" else float(v)) for k, v in zip(SCORE_KEYS, cells)}


def _scores(base: float) -> dict:
    return {a: round(base + 0.01 * i + 0.0000013, 6) for i, a in enumerate(SCORE_KEYS)}


def assert_report_matches(root: Path) -> dict:
    s = json.loads((root / "ensemble" / "scores.json").read_text())
    md = (root / "ensemble" / "report.md").read_text()
    tables = parse_tables(md)
    offline = tables[HONEST]
    expected = {**s["models"], "blend": s["blend"]}
    if s.get("oracle"):
        expected["oracle"] = s["oracle"]
    assert set(offline) == set(expected)
    for name, sc in expected.items():
        assert _score_row(offline[name]) == sc, name
    # in-sample figures in their own, labelled table, never among the honest rows
    ins = tables[INSAMPLE]
    expected = {f"insample:{n}": v for n, v in s["insample"]["models"].items()}
    expected["insample:blend"] = s["insample"]["blend"]
    assert set(ins) == set(expected)
    for name, sc in expected.items():
        assert _score_row(ins[name]) == sc, name
    honest_text = md[md.index("## " + HONEST):md.index("## " + INSAMPLE)]
    assert "mean of the two out-of-half uAUCs" in honest_text
    assert "`blend` = the held-out blend" in honest_text
    assert "in-sample" not in honest_text.split("|")[0].replace("`insample", "")
    ins_text = md[md.index("## " + INSAMPLE):]
    assert "Chosen and scored on the same day-14 users" in ins_text.split("|")[0]
    if s.get("online"):
        online = tables["Online (test day)"]
        assert _score_row(online["online"]) == s["online"]
        for name, sc in (s.get("models_online") or {}).items():
            assert _score_row(online[f"online:{name}"]) == sc
    weights = tables["Blend weights"]
    for a in ACTIONS:
        method, *ws = weights[a]
        assert method == s["blend_method"][a]
        models = list(s["blend_weights"][a])
        assert [float(x) for x in ws] == pytest.approx([s["blend_weights"][a][m] for m in models],
                                                       abs=5e-4)
    return tables


def test_report_numbers_equal_scores_json(tmp_path):
    paths = Paths.at(tmp_path)
    scores = {
        "models": {"lgb": _scores(0.6), "mmoe": {**_scores(0.55), "comment": None}},
        "blend": _scores(0.61), "oracle": _scores(0.7),
        "insample": {"models": {"lgb": _scores(0.64), "mmoe": _scores(0.57)}, "blend": _scores(0.66)},
        "online": _scores(0.63), "online_source": "ensemble",
        "models_online": {"lgb": _scores(0.59)},
        "blend_weights": {a: {"lgb": 0.725, "mmoe": 0.275} for a in ACTIONS},
        "blend_method": {a: ("rank" if i % 2 else "prob") for i, a in enumerate(ACTIONS)},
    }
    write_json(scores, paths.ensemble / "scores.json")
    write_json({"stage": "train_nn", "seconds": 12.34, "peak_rss_mb": 321.4},
               paths.model("mmoe") / "run_info_train_nn.json")
    write_json({"stage": "features", "seconds": 3.0, "peak_rss_mb": 99.0},
               paths.features / "run_info_features.json")
    write_json({"stage": "ghost", "seconds": 1.0, "peak_rss_mb": 1.0},
               paths.features / ".features.tmp" / "run_info_ghost.json")   # in-progress swap
    (paths.model("mmoe") / "gates.png").write_bytes(PNG_MAGIC + b"fake")
    (paths.model("ple") / "gates_level2.png").parent.mkdir(parents=True)
    (paths.model("ple") / "gates_level2.png").write_bytes(PNG_MAGIC + b"fake")

    report = render_report(paths, extra_sections={"Pipeline extras": "| a | b |\n|---|---|\n| x | 1 |"})
    md = report.read_text()
    tables = assert_report_matches(tmp_path)
    assert tables[HONEST]["mmoe"][ACTIONS.index("comment")] == "n/a"
    # runtimes: both run infos, not the one inside a hidden temporary folder
    runtimes = tables["Stage runtimes"]
    assert runtimes["models/mmoe"] == ["train_nn", "12.3", "321"]
    assert runtimes["features"] == ["features", "3.0", "99"]
    assert runtimes["**all**"] == ["", "15.3", "321"]
    assert "ghost" not in md
    s = json.loads((tmp_path / "ensemble" / "scores.json").read_text())
    assert s["stage_runtimes"] == {"features/features": {"seconds": 3.0, "peak_rss_mb": 99.0},
                                   "models/mmoe/train_nn": {"seconds": 12.34, "peak_rss_mb": 321.4}}
    # plots and gate heatmaps, linked relative to ensemble/
    for png in ("uauc_by_model.png", "blend_weights.png"):
        assert f"]({png})" in md
        assert (tmp_path / "ensemble" / png).read_bytes().startswith(PNG_MAGIC)
    assert "](../models/mmoe/gates.png)" in md and "](../models/ple/gates_level2.png)" in md
    assert "## Pipeline extras" in md and "| x | 1 |" in md


def test_collect_run_infos_reads_every_artifact_folder(tmp_path):
    for folder, stage in (("data/prepared", "prepare"), ("models/lgb", "train_lgb"),
                          ("ensemble", "blend"), ("submissions", "submit"), (".pipeline", "run_all")):
        write_json({"stage": stage, "seconds": 1.0, "peak_rss_mb": 2.0},
                   tmp_path / folder / f"run_info_{stage}.json")
    (tmp_path / "models" / "lgb" / "run_info_broken.json").write_text("{not json")
    infos = collect_run_infos(tmp_path)
    assert sorted((i["folder"], i["stage"]) for i in infos) == sorted([
        ("data/prepared", "prepare"), ("models/lgb", "train_lgb"), ("ensemble", "blend"),
        ("submissions", "submit"), (".pipeline", "run_all")])


def test_report_without_online_or_oracle(tmp_path):
    paths = Paths.at(tmp_path)
    write_json({"models": {"lgb": _scores(0.6)}, "blend": _scores(0.58),
                "insample": {"models": {"lgb": _scores(0.61)}, "blend": _scores(0.6)},
                "oracle": None, "online": None,
                "blend_weights": {a: {"lgb": 1.0} for a in ACTIONS},
                "blend_method": {a: "prob" for a in ACTIONS}}, paths.ensemble / "scores.json")
    md = render_report(paths).read_text()
    assert "No online score" in md and "oracle |" not in md
    assert_report_matches(tmp_path)
    with pytest.raises(FileNotFoundError, match="scores.json: missing; run the blend stage"):
        render_report(Paths.at(tmp_path / "nothing"))


def test_report_after_blend_and_submit_stages(tmp_path):
    w = make_world(n_users=50, rows_per_user=12, n_test_per_user=8, seed=9)
    root = write_root(tmp_path, w, standard_models(w))
    run_stage("blend.py", root, "--no-progress", "--set", "blend.search.max_evals=20")
    tables = assert_report_matches(root)
    assert "ensemble" in tables["Stage runtimes"]            # the blend's own run info
    run_stage("submit.py", root)
    tables = assert_report_matches(root)
    assert "online" in tables["Online (test day)"]
    assert tables["Stage runtimes"]["submissions"][0] == "submit"


def test_pipeline_summary_lists_stages_in_run_order_and_scores(tmp_path):
    import os

    from wbdc.summary import summary_lines, write_summary
    paths = Paths.at(tmp_path)
    write_json({"stage": "features", "seconds": 10.0, "peak_rss_mb": 100.0},
               paths.features / "run_info_features.json")
    write_json({"stage": "train_nn_mmoe", "seconds": 2.5, "peak_rss_mb": 50.0},
               paths.model("mmoe") / "run_info_train_nn_mmoe.json")
    os.utime(paths.features / "run_info_features.json", (1, 1))       # ran first
    scores = empty_scores()
    scores["models"] = {"mmoe": {"weighted": 0.61}}
    scores["blend"] = {"weighted": 0.605}
    scores["insample"] = {"models": {"mmoe": {"weighted": 0.64}}, "blend": {"weighted": 0.625}}
    write_json(scores, paths.ensemble / "scores.json")
    lines = summary_lines(paths, total_seconds=13)
    assert lines[4:7] == ["| features | features | 10.0 | 100 |",
                          "| train_nn_mmoe | models/mmoe | 2.5 | 50 |",
                          "| **whole run (this invocation)** | | 13 | |"]
    assert "| mmoe | 0.610000 |" in lines and "| blend (held out) | 0.605000 |" in lines
    assert "| blend in-sample (optimistic, not a score) | 0.625000 |" in lines
    assert not [x for x in lines if "0.640000" in x]         # in-sample model figures stay out
    (paths.ensemble / "report.md").write_text("# report\n\n## Pipeline summary\nold table\n")
    write_summary(paths, 13)
    text = (paths.ensemble / "report.md").read_text()
    assert text.startswith("# report\n\n## Pipeline summary\n") and "old table" not in text


def test_run_info_keeps_the_stages_own_peak_apart_from_its_childrens(tmp_path):
    """``peak_rss_mb`` is the larger of the stage's own peak and its largest finished child's (a
    LocalCluster's workers are the client's children); ``own_peak_rss_mb`` is the stage's alone,
    which the cluster benchmark reports as the client's.  Linux carries a parent's peak into a
    child across fork and exec, so the child here allocates 400 MB beyond this process's peak."""
    import resource
    import subprocess
    import sys
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # MB: at most this
    size = int(inherited) + 400
    child = f"b = bytearray({size} * 2**20); b[::4096] = b'x' * len(b[::4096])"
    code = f"""
import subprocess, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'src')!r})
from wbdc.runinfo import StageRun
with StageRun("probe", {str(tmp_path)!r}):
    subprocess.run([sys.executable, "-c", {child!r}], check=True)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    info = json.loads((tmp_path / "run_info_probe.json").read_text())
    assert info["peak_rss_mb"] >= size                     # the child's allocation
    assert info["own_peak_rss_mb"] < inherited + 200       # the stage itself held little
