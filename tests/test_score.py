"""The `score` command and wbdc.scoring: official-scorer rejections, merge, rounding, JSON."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from wbdc.io import InputError
from wbdc.schema import ACTION_WEIGHTS, ACTIONS
from wbdc.scoring import score_submission

REPO = Path(__file__).resolve().parents[1]
SCORE = REPO / "src" / "stages" / "score.py"
_spec = importlib.util.spec_from_file_location("wbdc_stage_score", SCORE)
score_stage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(score_stage)


def make_truth(seed: int = 0, n: int = 400) -> pd.DataFrame:
    """Truth in the synthetic world's test_truth.csv layout (device and p_<action> included)."""
    rng = np.random.default_rng(seed)
    t = pd.DataFrame({"userid": rng.integers(0, 25, n) * 11 + 2,
                      "feedid": rng.permutation(n) * 7 + 1, "device": rng.integers(1, 3, n)})
    for a in ACTIONS:
        t[a] = (rng.random(n) < 0.25).astype(np.int8)
    for a in ACTIONS:
        t[f"p_{a}"] = rng.random(n)
    return t


def make_submission(truth: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    s = truth[["userid", "feedid"]].copy()
    for a in ACTIONS:
        s[a] = np.clip(0.5 * rng.random(len(s)) + 0.3 * truth[a], 0, 1).round(7)
    return s.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # any row order


def reference_scores(sub: pd.DataFrame, truth: pd.DataFrame, actions=ACTIONS) -> dict:
    m = truth.merge(sub, on=["userid", "feedid"], suffixes=("", "_pred"))
    out = {}
    for a in actions:
        aucs = [roc_auc_score(g[a], g[f"{a}_pred"].round(6)) for _, g in m.groupby("userid")
                if 0 < g[a].sum() < len(g)]
        out[a] = float(np.mean(aucs))
    w = sum(ACTION_WEIGHTS[a] * out[a] for a in actions) / sum(ACTION_WEIGHTS[a] for a in actions)
    return {**{a: round(v, 6) for a, v in out.items()}, "weighted": round(w, 6)}


# ------------------------------------------------------------------------------ library

def test_scores_match_reference_after_merge_and_rounding():
    truth = make_truth()
    sub = make_submission(truth)
    out = score_submission(sub, truth)
    assert list(out) == [*ACTIONS, "weighted"]
    assert out == reference_scores(sub, truth)


def test_predictions_are_rounded_to_6_decimals_before_scoring():
    truth = pd.DataFrame({"userid": [1, 1], "feedid": [10, 11], "like": [1, 0]})
    sub = pd.DataFrame({"userid": [1, 1], "feedid": [11, 10], "like": [0.1234559, 0.1234561]})
    # unrounded the positive is ranked higher (AUC 1); rounded both are 0.123456: a tie
    assert score_submission(sub, truth, actions=["like"]) == {"like": 0.5, "weighted": 0.5}


def test_preliminary_actions_subset():
    truth = make_truth(2)
    sub = make_submission(truth, 3)[["userid", "feedid", *ACTIONS[:4]]]
    out = score_submission(sub, truth, actions=ACTIONS[:4])
    assert out == reference_scores(sub, truth, ACTIONS[:4])


def _reject(sub: pd.DataFrame, truth: pd.DataFrame, match: str) -> str:
    with pytest.raises(InputError, match=match) as e:
        score_submission(sub, truth)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_rejections_with_messages():
    truth = make_truth()
    good = make_submission(truth)

    _reject(good.iloc[:-1], truth, r"^submission: 399 rows but truth has 400 "
                                   r"\(one row per test row expected\)$")
    _reject(good.drop(columns=["like", "follow"]), truth,
            r"^submission: missing columns: like, follow \(has: userid, feedid, ")
    _reject(good, truth.drop(columns=["comment"]), r"^truth: missing columns: comment ")

    dup = good.copy()
    dup.loc[5, ["userid", "feedid"]] = dup.loc[2, ["userid", "feedid"]].to_numpy()
    _reject(dup, truth, rf"^submission: 1 duplicate \(userid, feedid\) keys \(first "
                        rf"userid={dup.userid[2]} feedid={dup.feedid[2]} at row 6\)$")

    nan = good.copy()
    nan.loc[[7, 9], "forward"] = np.nan
    _reject(nan, truth, r"^submission: column forward has 2 NaN values \(first at row 8\)$")

    out = good.copy()
    out.loc[4, "favorite"] = 1.5
    out.loc[8, "favorite"] = -0.01
    _reject(out, truth, r"^submission: column favorite has 2 values outside \[0, 1\] "
                        r"\(first 1.5 at row 5\)$")
    inf = good.copy()
    inf.loc[0, "like"] = np.inf
    _reject(inf, truth, r"^submission: column like has 1 values outside \[0, 1\] \(first inf")

    text = good.copy()
    text["comment"] = text["comment"].astype(object)
    text.loc[3, "comment"] = "high"
    _reject(text, truth, r"^submission: column comment is not numeric \(first bad value "
                         r"'high' at row 4\)$")

    stranger = good.copy()
    stranger.loc[10, "feedid"] = 999_999
    _reject(stranger, truth, rf"^submission: 1 \(userid, feedid\) keys are not in truth "
                             rf"\(first userid={stranger.userid[10]} feedid=999999 at row 11\)$")

    bad_truth = truth.copy()
    bad_truth.loc[0, "like"] = 2
    _reject(good, bad_truth, r"^truth: column like must hold 0/1 labels \(found 2.0 at row 1\)$")


# ------------------------------------------------------------------------------ command

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCORE), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_scores_prints_and_writes_json(tmp_path):
    truth = make_truth()
    sub = make_submission(truth)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    sub.to_csv(tmp_path / "sub.csv", index=False)
    out = tmp_path / "out" / "score.json"
    r = run_cli(str(tmp_path / "sub.csv"), str(tmp_path / "truth.csv"), "--json", str(out))
    assert r.returncode == 0, r.stderr
    ref = reference_scores(pd.read_csv(tmp_path / "sub.csv"), truth)
    lines = r.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == [*ACTIONS, "weighted"]
    assert lines[-1] == f"weighted      {ref['weighted']:.6f}"
    saved = json.loads(out.read_text())
    assert saved["scores"] == ref
    assert saved["truth"] == str((tmp_path / "truth.csv").resolve())
    assert saved["config"]["score"]["actions"] == list(ACTIONS)
    assert (out.parent / "run_info_score.json").is_file()
    assert "[score] done in" in r.stderr
    assert not list(out.parent.glob(".*tmp"))          # atomic write left nothing behind


def test_cli_rejection_is_one_line_exit_2(tmp_path):
    truth = make_truth()
    truth.to_csv(tmp_path / "truth.csv", index=False)
    make_submission(truth).iloc[:-3].to_csv(tmp_path / "sub.csv", index=False)
    r = run_cli(str(tmp_path / "sub.csv"), str(tmp_path / "truth.csv"))
    assert r.returncode == 2
    assert r.stderr == (f"error: {tmp_path / 'sub.csv'}: 397 rows but {tmp_path / 'truth.csv'} "
                        f"has 400 (one row per test row expected)\n")
    assert r.stdout == ""


def test_main_default_truth_actions_flag_and_missing_files(tmp_path, capsys):
    truth = make_truth(4)
    world = tmp_path / "data" / "synthetic" / "tiny_seed7" / "truth"
    world.mkdir(parents=True)
    truth.to_csv(world / "test_truth.csv", index=False)
    sub = make_submission(truth, 5)[["userid", "feedid", "read_comment", "like"]]
    sub.to_csv(tmp_path / "sub.csv", index=False)
    assert score_stage.main([str(tmp_path / "sub.csv"), "--root", str(tmp_path), "--preset",
                             "tiny", "--seed", "7", "--actions", "read_comment,like"]) == 0
    ref = reference_scores(sub, truth, ["read_comment", "like"])
    assert capsys.readouterr().out.splitlines() == [
        f"read_comment  {ref['read_comment']:.6f}", f"like          {ref['like']:.6f}",
        f"weighted      {ref['weighted']:.6f}"]

    with pytest.raises(FileNotFoundError, match=r"tiny_seed8/truth/test_truth.csv: truth file "
                                                r"not found; generate it with src/stages/"
                                                r"make_synthetic.py"):
        score_stage.main([str(tmp_path / "sub.csv"), "--root", str(tmp_path), "--preset", "tiny",
                          "--seed", "8"])
    with pytest.raises(FileNotFoundError, match=r"nope.csv: submission file not found"):
        score_stage.main([str(tmp_path / "nope.csv"), str(world / "test_truth.csv")])
    with pytest.raises(InputError, match=r"--actions: unknown share"):
        score_stage.main([str(tmp_path / "sub.csv"), str(world / "test_truth.csv"),
                          "--actions", "like,share"])
    with pytest.raises(InputError, match=r"missing columns: click_avatar, forward, favorite"):
        score_stage.main([str(tmp_path / "sub.csv"), str(world / "test_truth.csv")])


def test_main_warns_on_unscorable_action(tmp_path, capsys):
    truth = make_truth(6)
    truth["follow"] = 0
    truth.to_csv(tmp_path / "truth.csv", index=False)
    make_submission(truth).to_csv(tmp_path / "sub.csv", index=False)
    out = tmp_path / "s.json"
    assert score_stage.main([str(tmp_path / "sub.csv"), str(tmp_path / "truth.csv"),
                             "--json", str(out)]) == 0
    cap = capsys.readouterr()
    assert "follow        nan" in cap.out
    assert "warning: uauc[follow]: no user has both a positive and a negative row" in cap.err
    assert json.loads(out.read_text())["scores"]["follow"] is None
