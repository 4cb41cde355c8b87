"""The user's recent behaviour for the nets' DIN-style history block.

For every (user, day d) the table holds the user's last ``N`` exposures strictly before day d
(most recent last, left-padded): the feed and what the user did with it (the 7 action bits, one
byte).  A row of day d looks its history up by ``(userid, d)``; the model attends over it with
the candidate feed as the query (``wbdc.nn.inputs.HistoryAttention``).

No leak, by construction: the labelled rows come from ``FeatureStore.labelled_history(last)``
(days ``< last`` only), are sorted by (user, day) keeping the file order inside a day, and the
history of (u, d) is the slice ending at the first row of (u, d) -- a prefix of the days before
d.  Nothing of day d or later can enter it, whatever those rows hold (tests/test_nn_history.py
scrambles them).  Within a day the prepared file's order stands in for time (the official data
has no time of day).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: ``code = userid << DAY_BITS | day``: one sortable int64 per (user, day); days are 1..15.
DAY_BITS = 6


def pair_codes(userid: np.ndarray, day: np.ndarray | int) -> np.ndarray:
    return (np.asarray(userid, np.int64) << DAY_BITS) | np.asarray(day, np.int64)


@dataclass
class HistoryTable:
    """One row per (user, day) that has any history; row ``k`` of the arrays is ``codes[k]``."""
    codes: np.ndarray       # int64 [P], sorted
    feeds: np.ndarray       # int32 [P, N] raw feed ids (padding: 0, see ``length``)
    bits: np.ndarray        # uint8 [P, N] action bits (bit i = ACTIONS[i]); padding 0
    length: np.ndarray      # int16 [P] real entries, right-aligned in the N slots

    @property
    def max_len(self) -> int:
        return int(self.feeds.shape[1])

    def __len__(self) -> int:
        return len(self.codes)

    def lookup(self, userid: np.ndarray, day: np.ndarray) -> np.ndarray:
        """1-based table row of each (userid, day); 0 where the user has no history before it."""
        want = pair_codes(userid, day)
        if len(self.codes) == 0:
            return np.zeros(len(want), np.int32)
        pos = np.minimum(np.searchsorted(self.codes, want), len(self.codes) - 1)
        return np.where(self.codes[pos] == want, pos + 1, 0).astype(np.int32)

    def feed_ids(self) -> np.ndarray:
        """The distinct feeds the table refers to."""
        n = self.max_len
        real = np.arange(n)[None, :] >= (n - self.length.astype(np.int64))[:, None]
        return np.unique(self.feeds[real])

    def state_dict(self) -> dict:
        return {"codes": self.codes, "feeds": self.feeds, "bits": self.bits, "length": self.length}

    @classmethod
    def from_state_dict(cls, state: dict) -> "HistoryTable":
        arr = {k: np.asarray(v) for k, v in state.items()}
        return cls(arr["codes"].astype(np.int64), arr["feeds"].astype(np.int32),
                   arr["bits"].astype(np.uint8), arr["length"].astype(np.int16))


def history_windows(userid: np.ndarray, feedid: np.ndarray, day: np.ndarray, bits: np.ndarray,
                    days: Sequence[int], max_len: int) -> HistoryTable:
    """The last ``max_len`` rows of each user strictly before each day of ``days`` (vectorised:
    one sort of the rows, one ``searchsorted`` per (user, day), one gather)."""
    if max_len < 1:
        raise ValueError(f"history length must be at least 1, got {max_len}")
    day = np.asarray(day, np.int64)
    order = np.lexsort((np.arange(len(day)), day, np.asarray(userid, np.int64)))
    row_codes = pair_codes(np.asarray(userid)[order], day[order])
    feeds_sorted = np.asarray(feedid, np.int32)[order]
    bits_sorted = np.asarray(bits, np.uint8)[order]
    users = np.unique(np.asarray(userid, np.int64))
    want = np.asarray(sorted({int(d) for d in days}), np.int64)
    codes = ((users[:, None] << DAY_BITS) | want[None, :]).ravel()      # sorted: days < 64
    end = np.searchsorted(row_codes, codes, side="left")                # first row of (u, d)
    start = np.searchsorted(row_codes, (codes >> DAY_BITS) << DAY_BITS, side="left")   # u's first row
    length = np.minimum(end - start, max_len)
    keep = length > 0
    codes, end, length = codes[keep], end[keep], length[keep]
    slots = end[:, None] - max_len + np.arange(max_len)[None, :]        # right-aligned window
    real = slots >= (end - length)[:, None]
    src = np.where(real, slots, 0)
    feeds = np.where(real, feeds_sorted[src] if len(feeds_sorted) else 0, 0).astype(np.int32)
    hbits = np.where(real, bits_sorted[src] if len(bits_sorted) else 0, 0).astype(np.uint8)
    return HistoryTable(codes, feeds, hbits, length.astype(np.int16))


def build_history(store, days: Sequence[int], max_len: int) -> HistoryTable:
    """The history table of ``days`` from the store's labelled rows before the last of them."""
    last = max(int(d) for d in days)
    userid, feedid, day, bits = store.labelled_history(last)
    return history_windows(userid, feedid, day, bits, days, max_len)
