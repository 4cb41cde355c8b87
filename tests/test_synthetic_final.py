"""The `final` preset (issue 13) and the streaming generator behind it.

The generator holds only compact row arrays and computes the outcomes chunk by chunk while
writing; the worlds it writes must be byte-identical to those of the generator that held every
row's outcomes in memory (GENERATOR_VERSION 1.0). The digests below were computed with that
generator (commit d9a4914) and pin every file of the tiny and small worlds, normal and null."""
from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wbdc import config_schema
from wbdc.schema import ACTIONS, REAL_POSITIVE_RATES
from wbdc.synthetic import GENERATOR_VERSION, PRESETS, _Means, generate_world

# sha256 of every file written by generate_world(preset, seed, null) at commit d9a4914
REFERENCE = {
    ("tiny", 7, False): {
        "truth/day14_prob.csv": "522402338983cb95c2eeb739cbbf48dce00474a86e7b873f7c31f034c7759ad8",
        "truth/test_truth.csv": "d6a6c7032cd99b3e1b82dbb14663772d4b221a8ab0d658f02946ab8a8b897b5c",
        "truth/world.json": "b15b974602d920a7bd4f2651c9418a24eb60217ec09944594c9c8206993df316",
        "wechat_algo_data1/feed_embeddings.csv": "60376130cd72ac67fbcd45b2d3ad0e56d628ee8151f7853bb689a84105ca509a",
        "wechat_algo_data1/feed_info.csv": "3b5679426a6e7250009ad5e2a44ab1638c4e865cf133f38189e420d408e0b8b0",
        "wechat_algo_data1/test_a.csv": "0b8cf8135bb071ab50bb994949bdd9aaf5af8bafb2519b3785966f5498574e21",
        "wechat_algo_data1/user_action.csv": "8912f41f7d385cd3a8036365685fd55a1d7ab6f3bb7c9e3598385c7482c4edd1",
    },
    ("tiny", 7, True): {
        "truth/day14_prob.csv": "59d472414e6257fd486b937de770558b618cfe4f380d37047c7db9ad1fc35c56",
        "truth/test_truth.csv": "952f1bb27f0fa5c541ca07749cee32ea2c30dc5bac0cdf496d5c3e54db8f1094",
        "truth/world.json": "25afd52cb3c27d2d3424438c35a3b98056650de91c742ac945a7d8ddc275feda",
        "wechat_algo_data1/feed_embeddings.csv": "60376130cd72ac67fbcd45b2d3ad0e56d628ee8151f7853bb689a84105ca509a",
        "wechat_algo_data1/feed_info.csv": "3b5679426a6e7250009ad5e2a44ab1638c4e865cf133f38189e420d408e0b8b0",
        "wechat_algo_data1/test_a.csv": "0b8cf8135bb071ab50bb994949bdd9aaf5af8bafb2519b3785966f5498574e21",
        "wechat_algo_data1/user_action.csv": "84593e61e4404ac5e6309c364a8f42197db03a869b5490c445e19b7f84672061",
    },
    ("small", 2021, False): {
        "truth/day14_prob.csv": "6b318bcfae011a48ba34bb11cc99cf7331da10de9038f1b8e1e6c72cd099c120",
        "truth/test_truth.csv": "c054724c3ae40e1f38927c6edcc3568a04786412d544bed1ce24433993462bb4",
        "truth/world.json": "edf56cf3ca3bb99a2f38616731b38b642d18fe335cf7baffe4adc69a1de89e93",
        "wechat_algo_data1/feed_embeddings.csv": "ee2e7eae6d3caf362aa797d8f405ce66bd99776726fe00c9e623559e3c9a3d24",
        "wechat_algo_data1/feed_info.csv": "b8c33487f5deb5f3995a7c8a90c33082691189b50572e341b2d9dfdf8dabc1e2",
        "wechat_algo_data1/test_a.csv": "5f68a8f34e82a72be528b6f7146ecb473fa51a5552f46d3e57b25a8e0f5d27c0",
        "wechat_algo_data1/user_action.csv": "1a87531e11e880602b6dc707c4efc737b00450bd551fb42f4bb099a1f5908217",
    },
    ("small", 3, True): {
        "truth/day14_prob.csv": "8809bd92ae0dcf0bbd21ec0b5222cae652b9df41634d5f633bc285f920fe8bd6",
        "truth/test_truth.csv": "54b87ed46110703b86d0372e1961cf890e709048fdbc2e88c69375c45aea4fff",
        "truth/world.json": "77285e359af3442a6d33c1b01514ac54b3f5894d75cedcd7a4251a6c64fe32b8",
        "wechat_algo_data1/feed_embeddings.csv": "8d76858f70c9923bcd2c0892779617844aafbb62c888e56459c4918a09cd1804",
        "wechat_algo_data1/feed_info.csv": "c254af25cfe627d380442480e404c5d0b8f7d20250f81a394be901b58da2fa0e",
        "wechat_algo_data1/test_a.csv": "13beb904569e530d749e5b129b3b929c697ce7b5c5464600700bf08393868bae",
        "wechat_algo_data1/user_action.csv": "845731e670aa978a719ac53f3ae9a8361906c0d5c0991138d78c8919bcfe6661",
    },
}


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_final_preset_has_the_final_rounds_sizes_and_fulls_catalogue():
    final, full = PRESETS["final"], PRESETS["full"]
    assert (final.n_users, final.n_feeds) == (199_999, 106_444)
    assert (final.train_rows, final.test_rows) == (73_175_511, 4_252_097)
    same = {k: v for k, v in asdict(full).items()
            if k not in ("name", "n_users", "train_rows", "test_rows")}
    assert {k: asdict(final)[k] for k in same} == same        # authors, bgm, vocabularies, topics
    # rows per user as in full (the same world laws, ten times the users)
    assert final.train_rows / final.n_users == pytest.approx(full.train_rows / full.n_users, rel=0.01)
    assert set(typing.get_args(config_schema.Preset)) == set(PRESETS)   # the config accepts it


@pytest.mark.parametrize("preset,seed,null", list(REFERENCE))
def test_worlds_are_byte_identical_to_the_in_memory_generator(tmp_path, preset, seed, null):
    assert GENERATOR_VERSION == "1.0"
    summary = generate_world(preset, seed, tmp_path / "w", null=null)
    got = _digests(tmp_path / "w")
    want = REFERENCE[(preset, seed, null)]
    assert got.keys() == want.keys()
    assert [k for k in want if got[k] != want[k]] == []
    assert summary["null_world"] is null


def test_null_tiny_world_labels_ignore_the_truth(tmp_path):
    generate_world("tiny", 11, tmp_path / "w", null=True)
    truth = pd.read_csv(tmp_path / "w" / "truth" / "test_truth.csv")
    for a in ACTIONS:
        assert truth[f"p_{a}"].nunique() == 1
        assert truth[f"p_{a}"].iloc[0] == pytest.approx(REAL_POSITIVE_RATES[a], abs=1e-7)
    meta = json.loads((tmp_path / "w" / "truth" / "world.json").read_text())
    assert meta["null_world"] is True
    ua = pd.read_csv(tmp_path / "w" / "wechat_algo_data1" / "user_action.csv")
    assert abs(ua["like"].mean() / REAL_POSITIVE_RATES["like"] - 1) < 0.25


def test_chunked_means_equal_numpys_mean_over_all_rows():
    rng = np.random.default_rng(0)
    x = rng.random((250_001, len(ACTIONS)), dtype=np.float32) * np.float32(0.1)
    m = _Means()
    bounds = [0, 7, 100_000, 100_001, 250_001]
    for a, b in zip(bounds[:-1], bounds[1:]):
        m.add(x[a:b])
    want = x.mean(axis=0, dtype=np.float64)
    assert np.array_equal(m.sum / m.n, want)
