"""The one declaration of the official WBDC 2021 files.

Readers, validators and the synthetic writer are all derived from ``FILES`` below, so a
column renamed here is renamed everywhere.  Column kinds:

* ``id``      non-negative integer id, may not be missing
* ``opt_id``  integer id that may be missing (bgm ids); missing is stored as -1
* ``int``     integer measure (play/stay in ms)
* ``float``   real measure
* ``label``   0/1 action label
* ``day``     date_ in 1..14
* ``ids``     ';'-separated integer ids (keyword / tag lists), may be empty
* ``tagprob`` ';'-separated "tag prob" pairs (machine_tag_list)
* ``tokens``  ' '-separated integer token ids (description/ocr/asr and *_char)
* ``vector``  ' '-separated floats (feed_embedding, 512 of them)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTIONS: tuple[str, ...] = (
    "read_comment", "like", "click_avatar", "forward", "favorite", "comment", "follow",
)
ACTION_WEIGHTS: dict[str, float] = {
    "read_comment": 4.0, "like": 3.0, "click_avatar": 2.0,
    "forward": 1.0, "favorite": 1.0, "comment": 1.0, "follow": 1.0,
}
#: Preliminary-round positive rates over all 14 days (FACTS.md).
REAL_POSITIVE_RATES: dict[str, float] = {
    "read_comment": 0.03502, "like": 0.02580, "click_avatar": 0.00753, "forward": 0.00382,
    "favorite": 0.00134, "comment": 0.00040, "follow": 0.00072,
}
EMBEDDING_DIM = 512
FIRST_DAY, LAST_TRAIN_DAY, TEST_DAY = 1, 14, 15


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    dtype: str | None = None  # storage dtype for scalar kinds


@dataclass(frozen=True)
class FileSpec:
    filename: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def _labels(*names: str) -> tuple[Column, ...]:
    return tuple(Column(n, "label", "int8") for n in names)


USER_ACTION = FileSpec("user_action.csv", (
    Column("userid", "id", "int32"),
    Column("feedid", "id", "int32"),
    Column("date_", "day", "int8"),
    Column("device", "id", "int8"),
    *_labels("read_comment", "comment", "like"),
    Column("play", "int", "int32"),
    Column("stay", "int", "int32"),
    *_labels("click_avatar", "forward", "follow", "favorite"),
))

FEED_INFO = FileSpec("feed_info.csv", (
    Column("feedid", "id", "int32"),
    Column("authorid", "id", "int32"),
    Column("videoplayseconds", "int", "int32"),
    Column("description", "tokens"),
    Column("ocr", "tokens"),
    Column("asr", "tokens"),
    Column("bgm_song_id", "opt_id", "int32"),
    Column("bgm_singer_id", "opt_id", "int32"),
    Column("manual_keyword_list", "ids"),
    Column("machine_keyword_list", "ids"),
    Column("manual_tag_list", "ids"),
    Column("machine_tag_list", "tagprob"),
    Column("description_char", "tokens"),
    Column("ocr_char", "tokens"),
    Column("asr_char", "tokens"),
))

FEED_EMBEDDINGS = FileSpec("feed_embeddings.csv", (
    Column("feedid", "id", "int32"),
    Column("feed_embedding", "vector"),
))

TEST = FileSpec("test_a.csv", (
    Column("userid", "id", "int32"),
    Column("feedid", "id", "int32"),
    Column("device", "id", "int8"),
))

FILES: dict[str, FileSpec] = {
    "user_action": USER_ACTION,
    "feed_info": FEED_INFO,
    "feed_embeddings": FEED_EMBEDDINGS,
    "test": TEST,
}

SCALAR_KINDS = ("id", "opt_id", "int", "float", "label", "day")
LIST_KINDS = ("ids", "tagprob", "tokens", "vector")


def scalar_dtypes(spec: FileSpec) -> dict[str, str]:
    return {c.name: c.dtype for c in spec.columns if c.kind in SCALAR_KINDS}


def list_columns(spec: FileSpec) -> list[Column]:
    return [c for c in spec.columns if c.kind in LIST_KINDS]


# ---------------------------------------------------------------- list-field formatting
# The synthetic writer and the parser below are inverse to each other.

def format_ids(ids: np.ndarray | list[int]) -> str:
    return ";".join(str(int(i)) for i in ids)


def format_tokens(ids: np.ndarray | list[int]) -> str:
    return " ".join(str(int(i)) for i in ids)


def format_tagprob(ids, probs) -> str:
    return ";".join(f"{int(t)} {float(p):.8f}" for t, p in zip(ids, probs))


def format_vector(values: np.ndarray) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


FORMATTERS = {"ids": format_ids, "tokens": format_tokens, "vector": format_vector}
