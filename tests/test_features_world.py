"""A tiny prepared dataset (docs/ARTIFACTS.md contract: exact columns and dtypes) for the
feature tests, plus checks that it honours the contract."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from wbdc.config import load_defaults
from wbdc.io import write_json
from wbdc.paths import Paths
from wbdc.schema import ACTIONS, EMBEDDING_DIM

LIST_FIELDS = ("manual_keyword_list", "machine_keyword_list", "manual_tag_list", "machine_tag_list",
               "description", "ocr", "asr", "description_char", "ocr_char", "asr_char")


def _lists(lists: list[list[int]], dtype=pa.int32()) -> pa.Array:
    return pa.array(lists, type=pa.list_(dtype))


def feeds_table(feedid, authorid, vps, song, singer, keywords, tags, rng) -> pa.Table:
    n = len(feedid)
    arrays = {
        "feedid": pa.array(np.asarray(feedid, np.int32)),
        "authorid": pa.array(np.asarray(authorid, np.int32)),
        "videoplayseconds": pa.array(np.asarray(vps, np.int32)),
        "bgm_song_id": pa.array(np.asarray(song, np.int32)),
        "bgm_singer_id": pa.array(np.asarray(singer, np.int32)),
    }
    for f in LIST_FIELDS:
        if f == "manual_keyword_list":
            arrays[f] = _lists(keywords)
        elif f == "manual_tag_list":
            arrays[f] = _lists(tags)
        else:
            arrays[f] = _lists([list(rng.integers(0, 50, rng.integers(0, 6))) for _ in range(n)])
        if f == "machine_tag_list":
            arrays["machine_tag_prob"] = _lists([list(rng.random(len(x)).astype(np.float32))
                                                 for x in arrays[f].to_pylist()], pa.float32())
    return pa.table(arrays)


def write_prepared(root: Path, actions: pd.DataFrame, test: pd.DataFrame, feeds: pa.Table,
                   emb_ids: np.ndarray, emb: np.ndarray) -> Paths:
    paths = Paths.at(root)
    out = paths.prepared
    out.mkdir(parents=True, exist_ok=True)
    actions = actions[["userid", "feedid", "date_", "device", *ACTIONS, "play", "stay"]].astype(
        {"userid": "int32", "feedid": "int32", "date_": "int8", "device": "int8",
         **{a: "int8" for a in ACTIONS}, "play": "int32", "stay": "int32"})
    test = test[["userid", "feedid", "device"]].astype({"userid": "int32", "feedid": "int32", "device": "int8"})
    pq.write_table(pa.Table.from_pandas(actions, preserve_index=False), out / "actions.parquet")
    pq.write_table(pa.Table.from_pandas(test, preserve_index=False), out / "test.parquet")
    pq.write_table(feeds, out / "feeds.parquet")
    np.save(out / "feed_embeddings.npy", emb.astype(np.float32))
    np.save(out / "feed_embedding_ids.npy", emb_ids.astype(np.int32))
    write_json({"n_actions": len(actions), "n_test": len(test), "synthetic": True, "truth_dir": None},
               out / "meta.json")
    return paths


def make_world(root: Path, n_users: int = 30, n_feeds: int = 50, n_authors: int = 8,
               rows_per_day: int = 120, seed: int = 0, cold_feeds: int = 5) -> Paths:
    """Random prepared dataset over days 1..14 plus a test day; the last ``cold_feeds`` feeds
    appear only in the test rows (cold start)."""
    rng = np.random.default_rng(seed)
    feedid = np.arange(n_feeds) + 100
    authorid = rng.integers(0, n_authors, n_feeds)
    song = np.where(rng.random(n_feeds) < 0.3, -1, rng.integers(0, 10, n_feeds))
    singer = np.where(song < 0, -1, song % 4)
    keywords = [list(rng.integers(0, 20, rng.integers(0, 3))) for _ in range(n_feeds)]
    tags = [list(rng.integers(0, 6, rng.integers(0, 3))) for _ in range(n_feeds)]
    feeds = feeds_table(feedid, authorid, rng.integers(5, 60, n_feeds), song, singer, keywords, tags, rng)
    warm = feedid[:n_feeds - cold_feeds]
    rows = []
    for d in range(1, 15):
        pairs = set()
        while len(pairs) < rows_per_day:
            pairs.add((int(rng.integers(0, n_users)), int(rng.choice(warm))))
        for u, f in sorted(pairs, key=lambda _: rng.random()):
            rows.append((u, f, d))
    a = pd.DataFrame(rows, columns=["userid", "feedid", "date_"])
    a = a.drop_duplicates(["userid", "feedid"], keep="last").reset_index(drop=True)
    n = len(a)
    a["device"] = rng.integers(1, 3, n)
    for i, act in enumerate(ACTIONS):
        a[act] = (rng.random(n) < [0.3, 0.25, 0.1, 0.08, 0.05, 0.03, 0.03][i]).astype(int)
    a["play"] = rng.integers(0, 60000, n)
    a["stay"] = a["play"] + rng.integers(0, 5000, n)
    t = pd.DataFrame({"userid": rng.integers(0, n_users + 3, 150),  # 3 users never seen before
                      "feedid": rng.choice(feedid, 150), "device": rng.integers(1, 3, 150)})
    t = t.drop_duplicates(["userid", "feedid"]).reset_index(drop=True)
    emb = rng.normal(size=(n_feeds, EMBEDDING_DIM)).astype(np.float32)
    return write_prepared(root, a, t, feeds, feedid, emb)


def small_config(**features_overrides) -> dict:
    """configs/*.yaml with test-sized word2vec / PCA and deterministic word2vec."""
    cfg = load_defaults()
    f = cfg["features"]
    f["w2v"]["deterministic"] = True
    for kind in ("feed", "author"):
        f["w2v"][kind].update({"dim": 4, "epochs": 2, "window": 3})
    f["pca"]["dim"] = 6
    # the pinned store digests predate the feed vector columns, the per-action interest
    # similarities, the same-day and the seen-history similarities (each tested on its own)
    f["pca"]["feed_columns"] = f["w2v"]["feed_columns"] = 0
    f["pca"]["action_sims"] = f["w2v"]["action_sims"] = []
    f["pca"]["today_sims"] = f["w2v"]["today_sims"] = False
    f["pca"]["seen_sims"] = []
    for k, v in features_overrides.items():
        f[k] = v
    return copy.deepcopy(cfg)


def test_world_honours_prepared_contract(tmp_path):
    paths = make_world(tmp_path)
    a = pd.read_parquet(paths.prepared / "actions.parquet")
    assert list(a.columns) == ["userid", "feedid", "date_", "device", *ACTIONS, "play", "stay"]
    assert a["userid"].dtype == np.int32 and a["date_"].dtype == np.int8 and a["like"].dtype == np.int8
    assert not a.duplicated(["userid", "feedid"]).any()
    feeds = pq.read_table(paths.prepared / "feeds.parquet")
    assert feeds.schema.field("manual_tag_list").type == pa.list_(pa.int32())
    assert feeds.schema.field("machine_tag_prob").type == pa.list_(pa.float32())
    assert np.load(paths.prepared / "feed_embeddings.npy").shape == (50, EMBEDDING_DIM)
