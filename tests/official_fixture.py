"""A small, valid dataset in the official layout, written straight from wbdc.schema."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from wbdc import schema


def write_official(raw: Path, seed: int = 0, n_users: int = 30, n_feeds: int = 60,
                   rows_per_day: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    feedids = np.arange(1, n_feeds + 1)
    feeds = pd.DataFrame({
        "feedid": feedids,
        "authorid": rng.integers(1, 15, n_feeds),
        "videoplayseconds": rng.integers(5, 60, n_feeds),
        "description": [schema.format_tokens(rng.integers(1, 500, rng.integers(0, 6))) for _ in feedids],
        "ocr": [schema.format_tokens(rng.integers(1, 500, rng.integers(0, 4))) for _ in feedids],
        "asr": [schema.format_tokens(rng.integers(1, 500, rng.integers(0, 4))) for _ in feedids],
        "bgm_song_id": np.where(rng.random(n_feeds) < 0.4, np.nan, rng.integers(1, 30, n_feeds)),
        "bgm_singer_id": np.where(rng.random(n_feeds) < 0.4, np.nan, rng.integers(1, 20, n_feeds)),
        "manual_keyword_list": [schema.format_ids(rng.integers(1, 100, rng.integers(0, 3))) for _ in feedids],
        "machine_keyword_list": [schema.format_ids(rng.integers(1, 100, rng.integers(0, 3))) for _ in feedids],
        "manual_tag_list": [schema.format_ids(rng.integers(1, 40, rng.integers(0, 3))) for _ in feedids],
        "machine_tag_list": [schema.format_tagprob(rng.integers(1, 40, k), rng.random(k))
                             for k in rng.integers(0, 3, n_feeds)],
        "description_char": [schema.format_tokens(rng.integers(1, 900, rng.integers(0, 8))) for _ in feedids],
        "ocr_char": ["" for _ in feedids],
        "asr_char": [schema.format_tokens(rng.integers(1, 900, rng.integers(0, 3))) for _ in feedids],
    })
    feeds["bgm_song_id"] = feeds["bgm_song_id"].astype("Int64")
    feeds["bgm_singer_id"] = feeds["bgm_singer_id"].astype("Int64")
    feeds[schema.FEED_INFO.names].to_csv(raw / "feed_info.csv", index=False)

    emb = rng.normal(size=(n_feeds, schema.EMBEDDING_DIM)).astype(np.float32)
    pd.DataFrame({"feedid": feedids,
                  "feed_embedding": [schema.format_vector(v) + " " for v in emb]}
                 ).to_csv(raw / "feed_embeddings.csv", index=False)

    rows = []
    for day in range(1, 15):
        n = rows_per_day
        rows.append(pd.DataFrame({
            "userid": rng.integers(1, n_users + 1, n), "feedid": rng.choice(feedids, n),
            "date_": day, "device": rng.integers(1, 3, n)}))
    ua = pd.concat(rows, ignore_index=True)
    ua = ua.drop_duplicates(["userid", "feedid"], keep="last").reset_index(drop=True)
    for a in schema.ACTIONS:
        ua[a] = (rng.random(len(ua)) < 0.2).astype(int)
    ua["play"] = rng.integers(0, 60000, len(ua))
    ua["stay"] = ua["play"] + rng.integers(0, 5000, len(ua))
    ua[schema.USER_ACTION.names].to_csv(raw / "user_action.csv", index=False)

    test = pd.DataFrame({"userid": rng.integers(1, n_users + 1, 50), "feedid": rng.choice(feedids, 50),
                         "device": rng.integers(1, 3, 50)}).drop_duplicates(["userid", "feedid"])
    test[schema.TEST.names].to_csv(raw / "test_a.csv", index=False)
    return raw
