"""Static feed features: label-free columns that describe a feed, from data/prepared/feeds.parquet.

Categorical ids (``role categorical``): bgm_song_id, bgm_singer_id, manual_keyword_1 (first
manual keyword), manual_tag_1 (first manual tag), all stored as ``raw id + 1`` so that 0 means
missing / empty list; authorid is stored raw (never missing).  Dense counts for the trees:
videoplayseconds, list lengths of the keyword / tag lists, token counts of description / ocr /
asr, and how many feeds share the feed's author, bgm song, bgm singer and first tag (counts over
the feed table, so they use no label).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ..io import InputError

# categorical columns whose raw value may be missing: stored as raw + 1, 0 = missing
SHIFTED_IDS = ("bgm_song_id", "bgm_singer_id", "manual_keyword_1", "manual_tag_1")
FEED_CATEGORICAL = ("authorid", *SHIFTED_IDS)
LENGTH_FIELDS = ("manual_keyword_list", "machine_keyword_list", "manual_tag_list",
                 "machine_tag_list", "description", "ocr", "asr")
SHARE_COUNTS = {"author_n_feeds": "authorid", "song_n_feeds": "bgm_song_id",
                "singer_n_feeds": "bgm_singer_id", "tag_n_feeds": "manual_tag_1"}


def list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [n+1] starting at 0, values) of a list column; nulls read as empty."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    values = values[offsets[0]:offsets[-1]]
    return offsets - offsets[0], values


def list_lengths(col) -> np.ndarray:
    offsets, _ = list_parts(col)
    return np.diff(offsets)


def first_or_missing(col) -> np.ndarray:
    """First element + 1 of each list, 0 for an empty list."""
    offsets, values = list_parts(col)
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.int64)
    nonempty = offsets[1:] > offsets[:-1]
    out[nonempty] = values[offsets[:-1][nonempty]].astype(np.int64) + 1
    return out


def feed_static(feeds: pa.Table) -> pd.DataFrame:
    """One row per feed (feed-table order): feedid, categorical ids and dense counts."""
    for c in ("feedid", "authorid", "videoplayseconds", "bgm_song_id", "bgm_singer_id", *LENGTH_FIELDS):
        if c not in feeds.column_names:
            raise InputError(f"feeds.parquet: column '{c}' missing; rerun the prepare stage")
    out = pd.DataFrame({"feedid": feeds.column("feedid").to_numpy().astype(np.int32)})
    out["authorid"] = feeds.column("authorid").to_numpy().astype(np.int32)
    for c in ("bgm_song_id", "bgm_singer_id"):
        raw = feeds.column(c).to_numpy().astype(np.int64)
        out[c] = np.where(raw < 0, 0, raw + 1).astype(np.int32)
    out["manual_keyword_1"] = first_or_missing(feeds.column("manual_keyword_list")).astype(np.int32)
    out["manual_tag_1"] = first_or_missing(feeds.column("manual_tag_list")).astype(np.int32)
    out["videoplayseconds"] = feeds.column("videoplayseconds").to_numpy().astype(np.float32)
    for c in LENGTH_FIELDS:
        out[f"n_{c}"] = list_lengths(feeds.column(c)).astype(np.float32)
    for name, col in SHARE_COUNTS.items():
        ids = out[col].to_numpy()
        counts = np.bincount(ids).astype(np.float32)
        shared = counts[ids]
        if col in SHIFTED_IDS:  # "missing" is not a shared value
            shared = np.where(ids == 0, 0, shared)
        out[name] = shared.astype(np.float32)
    return out


def static_dense_columns() -> list[str]:
    return ["videoplayseconds", *(f"n_{c}" for c in LENGTH_FIELDS), *SHARE_COUNTS]


def author_static(feed_table: pd.DataFrame) -> pd.DataFrame:
    """One row per author: number of feeds, mean video length, distinct bgm songs / first tags."""
    g = feed_table.groupby("authorid", sort=True)
    out = pd.DataFrame({
        "authorid": np.asarray(g.size().index, dtype=np.int32),
        "author_n_feeds": g.size().to_numpy().astype(np.float32),
        "author_mean_videoplayseconds": g["videoplayseconds"].mean().to_numpy().astype(np.float32),
        "author_n_songs": g["bgm_song_id"].nunique().to_numpy().astype(np.float32),
        "author_n_tags": g["manual_tag_1"].nunique().to_numpy().astype(np.float32),
    })
    return out


def feed_lists_table(feeds: pa.Table, fields: list[str]) -> pa.Table:
    """feedid plus the chosen list fields with every id shifted by +1 (0 reserved for padding)."""
    arrays = {"feedid": pa.array(feeds.column("feedid").to_numpy().astype(np.int32))}
    for f in fields:
        if f not in feeds.column_names:
            raise InputError(f"feeds.parquet: list column '{f}' missing (features.feed_lists)")
        offsets, values = list_parts(feeds.column(f))
        arrays[f] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                             pa.array(values.astype(np.int32) + 1))
    return pa.table(arrays)
