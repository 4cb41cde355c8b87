"""Stage stamps: exactly the stages a change touches rerun (the invalidation matrix), and the plan
run_all.sh follows (wbdc.pipeline, src/stages/stamp.py).

The matrix compares two `Stamps.chain` results (every stage's digest after a clean run), so it
checks the real digests without training anything.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wbdc.config import REPO_ROOT, apply_set, default_config, resolve_argv
from wbdc.pipeline import SRC, Stamps, plan, stage_folder, stage_specs
from wbdc.registry import DEFAULT_MODELS, MODELS, parse_models

ALL = ["popularity", *DEFAULT_MODELS]          # the stages of a default run (omoe is opt-in)
NETS = ["sb", "mmoe", "ple"]
AFTER = ["blend", "submit"]
EVERYTHING = ["make_synthetic", "prepare", "features", *ALL, *AFTER]


def _cfg(*sets: str) -> dict:
    cfg = resolve_argv(["--preset", "tiny"])
    for s in sets:
        apply_set(cfg, s)
    return cfg


def _changed(a: dict, b: dict) -> list[str]:
    assert list(a) == list(b)
    return [k for k in a if a[k] != b[k]]


@pytest.mark.parametrize("assignment,reruns", [
    ("nn.mmoe.n_experts=2", ["mmoe", *AFTER]),
    ("nn.ple.n_levels=1", ["ple", *AFTER]),
    ("nn.train.epochs=1", [*NETS, *AFTER]),
    ("nn.embedding.dim=8", [*NETS, *AFTER]),
    ("lgb.params.num_leaves=31", ["lgb", *AFTER]),
    ("lgb.num_boost_round=10", ["lgb", *AFTER]),
    ("blend.search.max_evals=20", AFTER),
    ("features.pca.dim=8", ["features", *ALL, *AFTER]),
    ("data.seed=3", EVERYTHING),
    ("data.memory_gb=2", []),                              # chunking only, never results
])
def test_a_config_change_reruns_exactly_the_stages_that_read_it(assignment, reruns, tmp_path):
    specs = stage_specs(parse_models(None))
    stamps = Stamps(tmp_path)
    base = stamps.chain(specs, _cfg())
    try:
        changed = stamps.chain(specs, _cfg(assignment))
    except Exception as e:     # a key the defaults spell differently would make the test vacuous
        raise AssertionError(f"{assignment}: {e}") from None
    assert _changed(base, changed) == reruns


def test_the_example_keys_exist_and_differ_from_the_defaults():
    """Guard for the matrix above: each assignment that must rerun something changes a value."""
    cfg = default_config()
    assert cfg["nn"]["mmoe"]["n_experts"] != 2 and cfg["nn"]["ple"]["n_levels"] != 1
    assert cfg["nn"]["train"]["epochs"] != 1 and cfg["lgb"]["params"]["num_leaves"] != 31
    assert cfg["features"]["pca"]["dim"] != 8 and cfg["blend"]["search"]["max_evals"] != 20
    assert cfg["nn"]["embedding"]["dim"] != 8


def test_a_changed_popularity_template_reruns_popularity_and_after(tmp_path):
    specs = stage_specs(parse_models(None))
    stamps = Stamps(tmp_path)
    a = stamps.chain(specs, _cfg())
    b = stamps.chain(specs, _cfg("popularity.template=feed_w7_rate_{action}"))
    assert _changed(a, b) == ["popularity", *AFTER]


@pytest.mark.parametrize("edit,reruns", [
    ("wbdc/nn/models.py", [*NETS, *AFTER]),
    ("wbdc/lgb.py", ["lgb", *AFTER]),
    ("wbdc/baselines.py", ["popularity", *AFTER]),
    ("wbdc/blend.py", AFTER),
    ("wbdc/features/store.py", ["features", *ALL, *AFTER]),
    ("wbdc/config.py", EVERYTHING),
    ("stages/train_nn.py", [*NETS, *AFTER]),
])
def test_a_source_edit_reruns_exactly_the_stages_that_use_it(edit, reruns, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
    specs = stage_specs(parse_models(None))
    cfg = _cfg()
    base = Stamps(tmp_path, src=src).chain(specs, cfg)
    f = src / edit
    f.write_text(f.read_text() + "\n# an edit\n")
    assert _changed(base, Stamps(tmp_path, src=src).chain(specs, cfg)) == reruns


def test_a_model_subset_changes_only_the_blend_and_after(tmp_path):
    stamps = Stamps(tmp_path)
    cfg = _cfg()
    full = stamps.chain(stage_specs(parse_models(None)), cfg)
    sub = stamps.chain(stage_specs(parse_models("lgb")), cfg)
    assert list(sub) == ["make_synthetic", "prepare", "features", "popularity", "lgb", *AFTER]
    assert [k for k in sub if sub[k] != full[k]] == AFTER


def test_parse_models_and_the_registry():
    assert parse_models("mmoe") == ["popularity", "mmoe"]
    assert parse_models("ple, lgb") == ["popularity", "lgb", "ple"]
    assert parse_models(None) == ["popularity", *DEFAULT_MODELS]
    with pytest.raises(ValueError, match="unknown model 'xgb'"):
        parse_models("lgb,xgb")
    with pytest.raises(ValueError, match="--models is empty"):
        parse_models(",")


def test_online_plan_on_a_fresh_root_runs_the_offline_selection_too(tmp_path):
    specs = stage_specs(parse_models("lgb,mmoe"))
    steps = {name: args for name, _, args in plan(specs, _cfg(), tmp_path, "online")}
    assert steps["lgb"][-2:] == ["--mode", "all"] and steps["mmoe"][-2:] == ["--mode", "all"]
    assert steps["popularity"][-2:] == ["--mode", "online"]
    assert steps["blend"] == ["--mode", "online", "--models", "popularity,lgb,mmoe"]
    for model in ("lgb", "mmoe"):
        d = tmp_path / "models" / model
        d.mkdir(parents=True)
        (d / "pred_offline.parquet").write_bytes(b"x")
        (d / "scores.json").write_text("{}")
    steps = {name: args for name, _, args in plan(specs, _cfg(), tmp_path, "online")}
    assert steps["lgb"][-2:] == ["--mode", "online"] and steps["mmoe"][-2:] == ["--mode", "online"]
    offline = [name for name, _, _ in plan(specs, _cfg(), tmp_path, "offline")]
    assert "submit" not in offline


def test_real_data_runs_no_synthetic_stage(tmp_path):
    cfg = resolve_argv(["--data-dir", str(tmp_path)])
    specs = stage_specs(parse_models("lgb"))
    assert "make_synthetic" not in [n for n, _, _ in plan(specs, cfg, tmp_path, "all")]
    assert "make_synthetic" not in Stamps(tmp_path).chain(specs, cfg)


def test_stage_folders_point_at_this_runs_artifacts(tmp_path):
    cfg = _cfg()
    assert stage_folder("make_synthetic", cfg, tmp_path) == f"data/synthetic/tiny_seed{cfg['data']['seed']}"
    assert stage_folder("mmoe", cfg, tmp_path) == "models/mmoe"
    assert stage_folder("blend", cfg, tmp_path) == "ensemble"


def test_stamp_cli_plan_refuses_unknown_names_in_one_line(tmp_path):
    script = REPO_ROOT / "src" / "stages" / "stamp.py"
    for extra, word in ((["--models", "mmoe,xgb"], "xgb"), (["--from", "blnd"], "blnd")):
        r = subprocess.run([sys.executable, str(script), "plan", "--root", str(tmp_path), *extra],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], r.stderr
