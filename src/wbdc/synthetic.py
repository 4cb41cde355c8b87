"""The synthetic WBDC world: the pipeline's default data and its yardstick.

The real competition files are not available, so this module writes a world in exactly the
official layout (``wechat_algo_data1/``) together with its ground truth (``truth/``): the true
action probabilities of every day-14 and test row, so any model can be measured against the
best possible score.

The world is a latent-factor simulation built to reward what real solutions use, not quirks of
the generator:

* Topics with a centre in a K-dimensional factor space. Authors have a main topic; feeds take
  their author's topic (mostly) and a factor vector mixing topic, author and own noise. Text,
  keywords, tags and bgm are drawn mostly from the topic's vocabulary and the 512-d embedding
  is a random linear map of the feed's content vector plus noise, so content carries topic and
  factor signal (cold feeds are predictable from content).
* Users have a factor vector that drifts slowly over the days, two group-specific preference
  vectors (appreciation, discussion), an activity level, a per-day presence probability, a
  mostly fixed device and a bias per action (correlated within action groups).
* Exposure is a recommender's feed: each row is drawn from popular-and-fresh feeds, from the
  user's preferred topics, or from the user's favourite authors (repeat user-author history).
  Feeds are released over the days and their exposure decays with age, with a long tail.
  ``day15_release_share`` of feeds are first released on day 15 (cold test feeds).
* Each action's logit is an intercept plus a per-user bias plus a weighted mix of a feed part
  (group latent + own latent), a personal part (group preference + general preference) and a
  context part (freshness, video length), plus a device shift.  Groups: like/forward/favorite
  share "appreciation", read_comment/comment share "discussion", click_avatar/follow share a
  user-author affinity (factor match + an idiosyncratic pair term + a favourite-author bonus).
  Intercepts are calibrated by bisection so the mean true probability over days 1-14 equals
  ``REAL_POSITIVE_RATES``.
* Labels are Bernoulli(p) marginally, drawn through a Gaussian copula with a row engagement
  factor and a group factor, so labels co-occur like real behaviours; play/stay share the
  engagement factor.

Determinism: every random step draws from its own ``numpy.random.Generator`` seeded with
(seed, step), and all numbers are produced without BLAS or hashing, so a (preset, seed) pair
always yields the same bytes.  CSV text is built by vectorised byte-matrix formatting that
produces exactly the text of the ``wbdc.schema.format_*`` helpers (tested).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from scipy.special import expit, ndtri
from tqdm import tqdm

from . import schema
from .hashing import pair_uniform
from .io import atomic_dir, write_json
from .runinfo import peak_rss_mb
from .schema import ACTIONS, REAL_POSITIVE_RATES, Column, FileSpec

GENERATOR_VERSION = "1.0"

RAW_DIRNAME = "wechat_algo_data1"
TRUTH_DIRNAME = "truth"
WORLD_JSON = "world.json"

# Real preliminary-round sizes (FACTS.md) that the presets scale from.
FULL_USERS, FULL_FEEDS, FULL_AUTHORS = 20_000, 106_444, 18_789
FULL_SONGS, FULL_SINGERS, FULL_KEYWORDS, FULL_TAGS = 25_159, 17_500, 14_255, 329
FULL_TRAIN_ROWS, FULL_DAY14_ROWS, FULL_TEST_ROWS = 7_317_882, 609_036, 421_985
FULL_WORDS, FULL_CHARS = 150_000, 20_000
# Real final-round sizes (FACTS.md): same 106,444 feeds, 199,999 users, 73,175,511 action rows.
FINAL_USERS, FINAL_TRAIN_ROWS, FINAL_TEST_ROWS = 199_999, 73_175_511, 4_252_097

N_DAYS = schema.LAST_TRAIN_DAY          # 14 training days
TEST_DAY = schema.TEST_DAY              # 15

GROUPS = ("appreciation", "discussion", "affinity")
ACTION_GROUP: dict[str, int] = {
    "read_comment": 1, "like": 0, "click_avatar": 2, "forward": 0,
    "favorite": 0, "comment": 1, "follow": 2,
}


# ------------------------------------------------------------------------------ presets

@dataclass(frozen=True)
class Preset:
    """Sizes of one synthetic world."""
    name: str
    n_users: int
    n_feeds: int
    n_authors: int
    n_songs: int
    n_singers: int
    n_keywords: int
    n_tags: int
    n_topics: int
    n_words: int
    n_chars: int
    train_rows: int              # target rows on days 1..14 (duplicate copies included)
    test_rows: int               # target rows on day 15
    day15_release_share: float   # share of feeds first released on day 15


def scaled_preset(name: str, n_users: int, n_feeds: int, train_rows: int, n_topics: int,
                  day15_release_share: float = 0.05) -> Preset:
    """A preset whose catalogue sizes scale from the real ones: linearly with the number of
    feeds for authors and bgm ids, with its square root for vocabularies (keywords, tags,
    words, characters), which grow sub-linearly with a corpus."""
    r = n_feeds / FULL_FEEDS
    s = float(np.sqrt(r))
    return Preset(
        name=name, n_users=n_users, n_feeds=n_feeds,
        n_authors=max(20, round(FULL_AUTHORS * r)),
        n_songs=max(20, round(FULL_SONGS * r)), n_singers=max(10, round(FULL_SINGERS * r)),
        n_keywords=max(n_topics * 8, round(FULL_KEYWORDS * s)),
        n_tags=max(n_topics * 2, round(FULL_TAGS * s)),
        n_topics=n_topics,
        n_words=max(2_000, round(FULL_WORDS * s)), n_chars=max(500, round(FULL_CHARS * s)),
        train_rows=train_rows, test_rows=round(train_rows * FULL_TEST_ROWS / FULL_TRAIN_ROWS),
        day15_release_share=day15_release_share,
    )


_FULL = Preset(
    name="full", n_users=FULL_USERS, n_feeds=FULL_FEEDS, n_authors=FULL_AUTHORS,
    n_songs=FULL_SONGS, n_singers=FULL_SINGERS, n_keywords=FULL_KEYWORDS, n_tags=FULL_TAGS,
    n_topics=48, n_words=FULL_WORDS, n_chars=FULL_CHARS, train_rows=FULL_TRAIN_ROWS,
    test_rows=FULL_TEST_ROWS, day15_release_share=0.05)

PRESETS: dict[str, Preset] = {
    "tiny": scaled_preset("tiny", 1_000, 3_000, 50_000, n_topics=16, day15_release_share=0.03),
    "small": scaled_preset("small", 4_000, 20_000, 1_000_000, n_topics=32,
                           day15_release_share=0.04),
    "full": _FULL,
    # the final round's sizes: the same feeds and catalogue as full, ten times the users and rows
    "final": replace(_FULL, name="final", n_users=FINAL_USERS, train_rows=FINAL_TRAIN_ROWS,
                     test_rows=FINAL_TEST_ROWS),
}


@dataclass(frozen=True)
class Knobs:
    """The world's behavioural constants (same for every preset; recorded in world.json)."""
    n_factors: int = 16
    # time
    catalog_share: float = 0.30          # feeds released before day 1 ...
    catalog_days: int = 20               # ... uniformly over the 20 days before
    decay_fast_days: float = 1.5         # exposure weight of a feed aged a days:
    decay_slow_days: float = 20.0        #   (1-tail) exp(-a/fast) + tail exp(-a/slow)
    decay_tail: float = 0.15
    day_growth: float = 0.165            # day-14 volume / mean daily volume - 1 (real: 0.165)
    drift: float = 0.35                  # user factors move by +-drift*direction over the days
    # exposure
    mode_shares: tuple[float, float, float] = (0.35, 0.45, 0.20)   # popular, topic, author
    topic_beta: float = 1.5              # sharpness of users' topic preference
    n_fav_authors: int = 8
    activity_sigma: float = 0.9          # lognormal spread of users' daily volume
    active_beta: tuple[float, float] = (3.0, 1.0)   # per-day presence probability ~ Beta
    dup_rate: float = 0.001              # injected duplicate pairs, days 1..13 only
    device2_share: float = 0.6
    device_switch: float = 0.03
    # action model: logit = c + user_bias + scale*(w_feed*feed + w_pers*personal + w_ctx*ctx)
    scale: tuple[float, ...] = (0.95, 0.9, 1.05, 1.05, 1.1, 0.95, 1.1)   # ACTIONS order
    w_feed: float = 0.45                 # variance shares of the three parts
    w_pers: float = 0.45
    w_ctx: float = 0.10
    feed_group_share: float = 0.6        # feed part: group latent vs own latent
    pers_group_share: tuple[float, float, float] = (0.5, 0.5, 0.8)   # per group
    rec_coef: tuple[float, ...] = (0.6, 0.9, 0.5, 0.8, 0.7, 0.5, 0.4)
    len_coef: tuple[float, ...] = (0.3, -0.4, 0.2, -0.3, 0.3, 0.3, 0.2)
    device_shift: tuple[float, ...] = (0.15, -0.05, 0.1, -0.1, 0.0, 0.1, 0.05)
    user_bias_sd: float = 0.8
    fav_bonus: float = 1.0
    # label copula: z = sqrt(e)*engagement + sqrt(g)*group + sqrt(1-e-g)*own
    copula_engagement: float = 0.15
    copula_group: float = 0.35
    # content
    bgm_missing: float = 0.40
    embedding_noise: float = 0.06
    embedding_trailing_space: float = 0.02


KNOBS = Knobs()

# ------------------------------------------------------------------ vectorised CSV cells
# A column's cells are a uint8 matrix [rows, width] holding the bytes of each cell, padded
# with NUL bytes anywhere; a CSV line is the concatenation of its cells, commas and a newline
# with the NULs dropped (``m[m != 0]`` keeps row-major order).  Every format below produces
# exactly the text of the matching ``wbdc.schema.format_*`` helper.

_NUL, _COMMA, _NL, _SPACE, _SEMI, _DOT, _MINUS, _ZERO = 0, 44, 10, 32, 59, 46, 45, 48


def _n_digits(max_value: int) -> int:
    return len(str(max(int(max_value), 0)))


def _digits(values: np.ndarray, width: int, strip_leading: bool = True) -> np.ndarray:
    """Decimal digits of non-negative ints as bytes, shape values.shape + (width,)."""
    v = np.asarray(values, dtype=np.int64)[..., None]
    pows = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    out = ((v // pows) % 10 + _ZERO).astype(np.uint8)
    if strip_leading:
        out[(v < pows) & (pows > 1)] = _NUL
    return out


def int_cells(values: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
    """Non-negative integers as text; rows flagged ``missing`` become empty cells."""
    v = np.asarray(values, dtype=np.int64)
    if missing is not None:
        v = np.where(missing, 0, v)
    if v.size and v.min() < 0:
        raise ValueError("int_cells: negative value")
    out = _digits(v, _n_digits(v.max()) if v.size else 1)
    if missing is not None:
        out[np.asarray(missing, dtype=bool)] = _NUL
    return out


def fraction_cells(values: np.ndarray, decimals: int) -> np.ndarray:
    """Values in [0, 1) as fixed-point text ``0.ddd`` (f"{v:.{decimals}f}" of the rounded value)."""
    scale = 10 ** decimals
    units = np.clip(np.rint(np.asarray(values, dtype=np.float64) * scale), 0, scale - 1)
    head = np.broadcast_to(np.array([_ZERO, _DOT], np.uint8), (len(units), 2))
    return np.concatenate([head, _digits(units.astype(np.int64), decimals, False)], axis=1)


def _item_separators(present: np.ndarray, sep: int) -> np.ndarray:
    """Separator byte before every present item that has a present item before it."""
    before = np.cumsum(present, axis=1) - present
    return np.where(present & (before > 0), sep, _NUL).astype(np.uint8)[..., None]


def list_cells(ids: np.ndarray, sep: str) -> np.ndarray:
    """Rows of integer ids (``-1`` = no item, holes allowed) joined by ``sep``: the text of
    ``format_ids`` (sep ';') or ``format_tokens`` (sep ' ') of each row's present ids."""
    ids = np.asarray(ids, dtype=np.int64)
    n, m = ids.shape
    present = ids >= 0
    width = _n_digits(ids.max()) if ids.size else 1
    dig = _digits(np.where(present, ids, 0), width)
    dig[~present] = _NUL
    cells = np.concatenate([_item_separators(present, ord(sep)), dig], axis=2)
    return cells.reshape(n, m * (width + 1))


def tagprob_cells(tags: np.ndarray, prob_units: np.ndarray) -> np.ndarray:
    """machine_tag_list text: "tag prob;tag prob" with probabilities given in 1e-8 units
    (the text of ``format_tagprob``)."""
    tags = np.asarray(tags, dtype=np.int64)
    n, m = tags.shape
    present = tags >= 0
    width = _n_digits(tags.max()) if tags.size else 1
    tag_d = _digits(np.where(present, tags, 0), width)
    prob_d = _digits(np.clip(prob_units, 0, 10 ** 8 - 1), 8, strip_leading=False)
    mid = np.broadcast_to(np.array([_SPACE, _ZERO, _DOT], np.uint8), (n, m, 3))
    items = np.concatenate([_item_separators(present, _SEMI), tag_d, mid, prob_d], axis=2)
    items[~present] = _NUL
    return items.reshape(n, -1)


def vector_cells(units: np.ndarray, trailing_space: np.ndarray | None = None) -> np.ndarray:
    """Space-separated reals given in 1e-4 units (|value| < 100): the ``format_vector`` text
    (``%.6g``) of those values, optionally with a trailing space like some real rows."""
    q = np.asarray(units, dtype=np.int64)
    if q.size and np.abs(q).max() >= 100 * 10_000:
        raise ValueError("vector_cells: |value| must be < 100")
    n, m = q.shape
    a = np.abs(q)
    ip, fp = a // 10_000, a % 10_000
    sep = np.full((n, m, 1), _SPACE, np.uint8)
    sep[:, 0] = _NUL
    sign = np.where(q < 0, _MINUS, _NUL).astype(np.uint8)[..., None]
    ip_d = _digits(ip, 2)
    dot = np.where(fp > 0, _DOT, _NUL).astype(np.uint8)[..., None]
    fp_d = _digits(fp, 4, strip_leading=False)
    nonzero_after = np.cumsum((fp_d != _ZERO)[..., ::-1], axis=-1)[..., ::-1] > 0
    fp_d[~nonzero_after] = _NUL                     # strip trailing zeros ("0.1200" -> "0.12")
    cells = np.concatenate([sep, sign, ip_d, dot, fp_d], axis=2).reshape(n, -1)
    tail = np.zeros((n, 1), np.uint8)
    if trailing_space is not None:
        tail[np.asarray(trailing_space, dtype=bool)] = _SPACE
    return np.concatenate([cells, tail], axis=1)


def scalar_cells(column: Column, values: np.ndarray) -> np.ndarray:
    """Cells of a scalar column by its schema kind."""
    if column.kind == "label":
        v = np.asarray(values)
        if v.size and (v.min() < 0 or v.max() > 1):
            raise ValueError(f"{column.name}: labels must be 0/1")
        return (v.astype(np.uint8) + _ZERO)[:, None]
    if column.kind == "opt_id":
        v = np.asarray(values, dtype=np.int64)
        return int_cells(v, missing=v < 0)
    if column.kind == "float":
        return fraction_cells(values, 9)
    return int_cells(values)


def csv_lines(cells: list[np.ndarray]) -> bytes:
    """Join cell matrices (one per column, same row count) into CSV lines."""
    n = cells[0].shape[0]
    parts: list[np.ndarray] = []
    for i, c in enumerate(cells):
        if i:
            parts.append(np.full((n, 1), _COMMA, np.uint8))
        parts.append(c)
    parts.append(np.full((n, 1), _NL, np.uint8))
    m = np.concatenate(parts, axis=1)
    return m[m != _NUL].tobytes()


def write_table(path: Path, spec: FileSpec, n_rows: int,
                cells_for: Callable[[slice], dict[str, np.ndarray]], chunk_rows: int,
                progress: bool = False) -> None:
    """Write ``spec``'s header and rows; ``cells_for(rows)`` gives each column's values (scalar
    kinds, converted here) or ready cell matrices (list kinds) for one chunk of rows."""
    starts = range(0, n_rows, chunk_rows)
    with TableWriter(path, spec) as table:
        for start in tqdm(starts, desc=f"write {spec.filename}", unit="chunk",
                          disable=not progress, file=sys.stderr, leave=False):
            table.write(cells_for(slice(start, min(start + chunk_rows, n_rows))))


class TableWriter:
    """``spec``'s header, then rows appended chunk by chunk (the bytes do not depend on how
    the rows are split into chunks)."""

    def __init__(self, path: Path, spec: FileSpec):
        self.spec = spec
        self.fh = open(path, "wb")
        self.fh.write((",".join(spec.names) + "\n").encode())

    def write(self, cols: dict[str, np.ndarray]) -> None:
        """Append rows: each column's values (scalar kinds) or ready cell matrices."""
        if len(cols[self.spec.columns[0].name]) == 0:
            return
        cells = [scalar_cells(c, cols[c.name]) if c.kind in schema.SCALAR_KINDS
                 else cols[c.name] for c in self.spec.columns]
        self.fh.write(csv_lines(cells))

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


# Truth files (never read by a training stage); probabilities are written with 9 decimals.
TRUTH_DAY14 = FileSpec("day14_prob.csv", (
    Column("userid", "id", "int32"), Column("feedid", "id", "int32"),
    *(Column(a, "float", "float32") for a in ACTIONS),
))
TRUTH_TEST = FileSpec("test_truth.csv", (
    Column("userid", "id", "int32"), Column("feedid", "id", "int32"),
    Column("device", "id", "int8"),
    *(Column(a, "label", "int8") for a in ACTIONS),
    *(Column(f"p_{a}", "float", "float32") for a in ACTIONS),
))


# ----------------------------------------------------------------------------- sampling

def _rng(seed: int, step: str) -> np.random.Generator:
    """An independent generator per step: changing one step never shifts another's draws."""
    key = [int(b) for b in step.encode()]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *key]))


class GroupSampler:
    """Draws one item of a requested group with probability proportional to item weights.

    Items are sorted by group once; per call, the weights' cumulative sum in that order turns
    a uniform into an item by binary search (inverse CDF), for millions of draws at once.
    """

    def __init__(self, groups: np.ndarray, n_groups: int):
        self.order = np.argsort(groups, kind="stable")
        counts = np.bincount(groups, minlength=n_groups)
        self.ends = np.cumsum(counts)
        self.starts = self.ends - counts
        self.nonempty = counts > 0
        self.cum = np.zeros(0)
        self.lo = self.hi = np.zeros(n_groups)
        self.last = np.zeros(n_groups, dtype=np.int64)

    def set_weights(self, weights: np.ndarray) -> "GroupSampler":
        w = np.asarray(weights, dtype=np.float64)[self.order]
        self.cum = np.cumsum(w)
        c0 = np.concatenate([[0.0], self.cum])
        self.lo, self.hi = c0[self.starts], c0[self.ends]
        # last positive-weight position of each group: float rounding never picks a zero item
        pos = np.where(w > 0, np.arange(len(w)), -1)
        last = np.full(len(self.starts), -1, dtype=np.int64)
        ne = self.nonempty
        if ne.any():
            last[ne] = np.maximum.reduceat(pos, self.starts[ne])
        self.last = last
        return self

    def has_mass(self, groups: np.ndarray) -> np.ndarray:
        return (self.hi[groups] > self.lo[groups]) & (self.last[groups] >= 0)

    def sample(self, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Items for ``groups`` (which must have mass) from uniforms ``u`` in [0, 1)."""
        lo, hi = self.lo[groups], self.hi[groups]
        idx = np.searchsorted(self.cum, lo + u * (hi - lo), side="right")
        idx = np.minimum(np.maximum(idx, self.starts[groups]), self.last[groups])
        return self.order[idx]


def _zipf_weights(n: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    """Zipf-like popularity with a random rank order (ids carry no popularity order)."""
    return (1.0 / (rng.permutation(n) + 1.0) ** exponent)


def _sample_distinct_ids(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    """n distinct external ids in [0, n*spread), in random order (ids encode nothing)."""
    return rng.choice(int(np.ceil(n * spread)), size=n, replace=False).astype(np.int64)


def _hash_normal(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """A fixed standard-normal value per (a, b) pair: splitmix64 of the pair, then ndtri.
    Gives an idiosyncratic user-author term without an n_users x n_authors table."""
    return ndtri(pair_uniform(a, b, salt)).astype(np.float32)


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def calibrate_intercept(x: np.ndarray, target: float, lo: float = -30.0, hi: float = 30.0,
                        tol: float = 1e-9) -> float:
    """The c with mean(sigmoid(c + x)) == target.

    The mean is increasing in c, so [lo, hi] always brackets the root; each step is a Newton
    step on log(mean) (almost linear in c for rare actions) or a bisection if Newton would
    leave the bracket, so it converges in a handful of passes over x.
    """
    x = np.asarray(x, dtype=np.float64)
    c = float(np.clip(np.log(target / (1 - target)) - np.median(x), lo, hi))
    for _ in range(100):
        p = expit(c + x)
        m = p.mean()
        if m < target:
            lo = c
        else:
            hi = c
        if abs(m - target) <= tol * target or hi - lo < 1e-12:
            break
        slope = (p * (1 - p)).mean() / m            # d log(mean) / dc
        step = c - (np.log(m) - np.log(target)) / max(slope, 1e-300)
        c = step if lo < step < hi else 0.5 * (lo + hi)
    return c


# --------------------------------------------------------------------------- the world

@dataclass
class World:
    """Entity-level latents of one world (index space: 0..n-1; external ids map them)."""
    preset: Preset
    seed: int
    knobs: Knobs
    # topics
    topic_centre: np.ndarray        # [T, K]
    topic_pop: np.ndarray           # [T]
    topic_disc: np.ndarray          # [T] how discussion-prone a topic is
    # authors
    author_topic: np.ndarray
    author_factor: np.ndarray       # [A, K]
    author_pop: np.ndarray
    author_charisma: np.ndarray     # feed-independent pull to click the avatar / follow
    # feeds
    feed_author: np.ndarray
    feed_topic: np.ndarray
    feed_factor: np.ndarray         # [F, K]
    feed_content: np.ndarray        # [F, K] what the content (embedding) shows of the factor
    feed_quality: np.ndarray
    feed_appeal: np.ndarray         # appreciation latent
    feed_discuss: np.ndarray        # discussion latent
    feed_own: np.ndarray            # [F, 7] action-specific feed latent
    feed_pop: np.ndarray
    feed_release: np.ndarray        # release day (<= 0: catalogue, 15: cold test feeds)
    feed_seconds: np.ndarray        # videoplayseconds
    # users
    user_factor: np.ndarray         # [U, K]
    user_drift: np.ndarray          # [U, K]
    user_app: np.ndarray            # [U, K] appreciation preference vector
    user_disc: np.ndarray           # [U, K] discussion preference vector
    user_bias: np.ndarray           # [U, 7]
    user_activity: np.ndarray       # expected rows per present day (before scaling)
    user_presence: np.ndarray       # probability of being present on a day
    user_device: np.ndarray         # usual device (1 or 2)
    user_fav: np.ndarray            # [U, n_fav] favourite authors
    # external ids
    user_ids: np.ndarray
    feed_ids: np.ndarray
    author_ids: np.ndarray
    # standardisation of dot products (measured on random user-feed pairs)
    norms: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_feeds(self) -> int:
        return len(self.feed_ids)


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def build_world(preset: str | Preset, seed: int, knobs: Knobs = KNOBS) -> World:
    """All entity latents of the world (fast; no rows yet)."""
    P = PRESETS[preset] if isinstance(preset, str) else preset
    K, T = knobs.n_factors, P.n_topics
    rng = _rng(seed, "entities")

    topic_centre = _normal(rng, T, K)
    topic_pop = np.exp(0.7 * rng.standard_normal(T))
    topic_pop /= topic_pop.sum()
    topic_disc = rng.standard_normal(T).astype(np.float32)

    A = P.n_authors
    author_topic = rng.choice(T, size=A, p=topic_pop)
    author_factor = (0.8 * topic_centre[author_topic] + 0.6 * _normal(rng, A, K)).astype(np.float32)
    author_pop = np.exp(1.0 * rng.standard_normal(A))
    author_quality = rng.standard_normal(A)
    author_charisma = rng.standard_normal(A).astype(np.float32)

    # feeds per author: heavy-tailed, every author has at least one feed
    F = P.n_feeds
    w_author = np.exp(1.3 * rng.standard_normal(A))
    extra = rng.choice(A, size=F - A, p=w_author / w_author.sum())
    feed_author = rng.permutation(np.concatenate([np.arange(A), extra]))
    own_topic = rng.random(F) < 0.75
    feed_topic = np.where(own_topic, author_topic[feed_author], rng.choice(T, size=F, p=topic_pop))
    feed_factor = (0.6 * topic_centre[feed_topic] + 0.5 * author_factor[feed_author]
                   + 0.6 * _normal(rng, F, K)).astype(np.float32)
    feed_content = (feed_factor + 0.3 * _normal(rng, F, K)).astype(np.float32)
    feed_quality = (0.6 * author_quality[feed_author] + 0.8 * rng.standard_normal(F)).astype(np.float32)
    feed_appeal = rng.standard_normal(F).astype(np.float32)
    feed_discuss = (0.6 * topic_disc[feed_topic] + 0.8 * rng.standard_normal(F)).astype(np.float32)
    feed_own = _normal(rng, F, len(ACTIONS))
    feed_pop = author_pop[feed_author] * np.exp(0.8 * rng.standard_normal(F) + 0.4 * feed_quality)
    seconds = np.exp(np.log(20.0) + 0.75 * rng.standard_normal(F))
    feed_seconds = np.clip(np.rint(seconds), 3, 600).astype(np.int64)

    # release days: catalogue before day 1, cold share on day 15, the rest over days 1..14
    # in proportion to the daily volume
    day_w = _day_volume(knobs)
    p_days = np.concatenate([
        np.full(knobs.catalog_days, knobs.catalog_share / knobs.catalog_days),
        (1.0 - knobs.catalog_share - P.day15_release_share) * day_w / day_w.sum(),
        [P.day15_release_share],
    ])
    days = np.arange(-knobs.catalog_days + 1, TEST_DAY + 1)
    feed_release = rng.choice(days, size=F, p=p_days / p_days.sum()).astype(np.int64)

    U = P.n_users
    user_factor = _normal(rng, U, K)
    user_drift = knobs.drift * _normal(rng, U, K)
    user_app = (0.7 * user_factor + 0.7 * _normal(rng, U, K)).astype(np.float32)
    user_disc = (0.7 * user_factor + 0.7 * _normal(rng, U, K)).astype(np.float32)
    ug = rng.standard_normal((U, len(GROUPS)))
    u_all = rng.standard_normal((U, 1))
    u_own = rng.standard_normal((U, len(ACTIONS)))
    g_idx = np.array([ACTION_GROUP[a] for a in ACTIONS])
    user_bias = (knobs.user_bias_sd * (np.sqrt(0.5) * ug[:, g_idx] + np.sqrt(0.2) * u_all
                                       + np.sqrt(0.3) * u_own)).astype(np.float32)
    user_activity = np.exp(knobs.activity_sigma * rng.standard_normal(U))
    user_presence = rng.beta(*knobs.active_beta, size=U)
    user_device = np.where(rng.random(U) < knobs.device2_share, 2, 1).astype(np.int64)

    # favourite authors: a topic from the user's taste, then an author of it by popularity
    fav_topic_cdf = _topic_cdf(user_factor, topic_centre, topic_pop, knobs.topic_beta)
    n_fav = knobs.n_fav_authors
    fav_topics = _draw_topics(fav_topic_cdf, np.repeat(np.arange(U), n_fav), rng.random(U * n_fav))
    by_topic = GroupSampler(author_topic, T).set_weights(author_pop)
    fav = np.full(U * n_fav, -1, dtype=np.int64)
    ok = by_topic.has_mass(fav_topics)
    fav[ok] = by_topic.sample(fav_topics[ok], rng.random(int(ok.sum())))
    fav[~ok] = rng.choice(A, size=int((~ok).sum()), p=author_pop / author_pop.sum())
    user_fav = fav.reshape(U, n_fav)

    ids = _rng(seed, "ids")
    world = World(
        preset=P, seed=seed, knobs=knobs,
        topic_centre=topic_centre, topic_pop=topic_pop, topic_disc=topic_disc,
        author_topic=author_topic, author_factor=author_factor, author_pop=author_pop,
        author_charisma=author_charisma,
        feed_author=feed_author, feed_topic=feed_topic, feed_factor=feed_factor,
        feed_content=feed_content, feed_quality=feed_quality, feed_appeal=feed_appeal,
        feed_discuss=feed_discuss, feed_own=feed_own, feed_pop=feed_pop,
        feed_release=feed_release, feed_seconds=feed_seconds,
        user_factor=user_factor, user_drift=user_drift, user_app=user_app, user_disc=user_disc,
        user_bias=user_bias, user_activity=user_activity, user_presence=user_presence,
        user_device=user_device, user_fav=user_fav,
        user_ids=_sample_distinct_ids(ids, U, 12.5),
        feed_ids=_sample_distinct_ids(ids, F, 1.06),
        author_ids=ids.permutation(A).astype(np.int64),
    )
    # standard deviations of the preference dot products over random user-feed pairs
    nr = _rng(seed, "norms")
    uu, ff = nr.integers(0, U, 200_000), nr.integers(0, F, 200_000)
    world.norms = {
        "pref": float(_rowdot(user_factor[uu], feed_factor[ff]).std()),
        "app": float(_rowdot(user_app[uu], feed_factor[ff]).std()),
        "disc": float(_rowdot(user_disc[uu], feed_factor[ff]).std()),
        "author": float(_rowdot(user_factor[uu], author_factor[feed_author[ff]]).std()),
    }
    return world


def _day_volume(knobs: Knobs) -> np.ndarray:
    """Relative row volume of days 1..14: a linear ramp with mean 1 (later days are busier)."""
    d = np.arange(1, N_DAYS + 1)
    return 1.0 + knobs.day_growth * (d - (N_DAYS + 1) / 2) / ((N_DAYS - 1) / 2)


def _topic_cdf(user_vec: np.ndarray, centre: np.ndarray, pop: np.ndarray, beta: float) -> np.ndarray:
    """Each user's cumulative topic distribution: softmax(beta * taste + log popularity)."""
    K = centre.shape[1]
    logits = beta * np.einsum("uk,tk->ut", user_vec, centre) / np.sqrt(K) + np.log(pop)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    cdf = np.cumsum(p, axis=1)
    return cdf / cdf[:, -1:]


def _draw_topics(cdf: np.ndarray, users: np.ndarray, u: np.ndarray) -> np.ndarray:
    out = np.empty(len(users), dtype=np.int64)
    step = 1 << 18
    for s in range(0, len(users), step):
        sl = slice(s, s + step)
        out[sl] = (cdf[users[sl]] <= u[sl, None]).sum(axis=1)
    return np.minimum(out, cdf.shape[1] - 1)


def _feed_day_weight(world: World, day: int) -> np.ndarray:
    """Exposure weight of every feed on ``day``: popularity x freshness; 0 before release."""
    k = world.knobs
    age = day - world.feed_release
    fresh = ((1 - k.decay_tail) * np.exp(-np.maximum(age, 0) / k.decay_fast_days)
             + k.decay_tail * np.exp(-np.maximum(age, 0) / k.decay_slow_days))
    return np.where(age >= 0, world.feed_pop * fresh, 0.0)


# ------------------------------------------------------------------------------ exposures

@dataclass
class Rows:
    """Exposure rows (index space), training days first in file order, then the test day."""
    user: np.ndarray
    feed: np.ndarray
    day: np.ndarray
    device: np.ndarray
    n_train: int
    n_duplicates: int


def _draw_feeds(world: World, users: np.ndarray, cdf: np.ndarray, rng: np.random.Generator,
                samplers: tuple[GroupSampler, GroupSampler, GroupSampler]) -> np.ndarray:
    """One feed per row: from the user's topics, the user's favourite authors or the
    popular-and-fresh pool (also the fallback when a topic/author has nothing released)."""
    k = world.knobs
    pop_s, topic_s, author_s = samplers
    n = len(users)
    mode = np.searchsorted(np.cumsum(k.mode_shares[:2]), rng.random(n), side="right")
    u_pick, u_group = rng.random(n), rng.random(n)
    feeds = np.full(n, -1, dtype=np.int64)

    sel = np.flatnonzero(mode == 1)
    topics = _draw_topics(cdf, users[sel], u_group[sel])
    ok = topic_s.has_mass(topics)
    feeds[sel[ok]] = topic_s.sample(topics[ok], u_pick[sel[ok]])

    sel = np.flatnonzero(mode == 2)
    slot = np.minimum((u_group[sel] * k.n_fav_authors).astype(np.int64), k.n_fav_authors - 1)
    authors = world.user_fav[users[sel], slot]
    ok = author_s.has_mass(authors)
    feeds[sel[ok]] = author_s.sample(authors[ok], u_pick[sel[ok]])

    rest = np.flatnonzero(feeds < 0)
    feeds[rest] = pop_s.sample(np.zeros(len(rest), dtype=np.int64), u_pick[rest])
    return feeds


class _SeenPairs:
    """Bit set over (user, feed) pairs: a recommender does not show a feed twice."""

    def __init__(self, n_users: int, n_feeds: int):
        self.n_feeds = n_feeds
        self.bits = np.zeros((n_users * n_feeds + 7) // 8, dtype=np.uint8)

    def key(self, users: np.ndarray, feeds: np.ndarray) -> np.ndarray:
        return users.astype(np.int64) * self.n_feeds + feeds

    def contains(self, key: np.ndarray) -> np.ndarray:
        return ((self.bits[key >> 3] >> (key & 7).astype(np.uint8)) & 1).astype(bool)

    def add(self, key: np.ndarray) -> None:
        np.bitwise_or.at(self.bits, key >> 3, (1 << (key & 7)).astype(np.uint8))


def _day_rows(world: World, day: int, scale: float, rng: np.random.Generator,
              samplers: tuple[GroupSampler, GroupSampler, GroupSampler],
              seen: _SeenPairs) -> tuple[np.ndarray, ...]:
    k = world.knobs
    U = world.n_users
    present = rng.random(U) < world.user_presence
    counts = rng.poisson(world.user_activity * scale) * present
    users = np.repeat(np.arange(U), counts)
    weights = _feed_day_weight(world, day)
    for s in samplers:
        s.set_weights(weights)
    t = (day - (N_DAYS + 2) / 2) / (N_DAYS / 2)      # drift position, -1 .. +1
    cdf = _topic_cdf(world.user_factor + t * world.user_drift, world.topic_centre,
                     world.topic_pop, k.topic_beta)
    feeds = _draw_feeds(world, users, cdf, rng, samplers)
    # redraw rows whose feed the user has already seen (earlier or earlier today)
    for _ in range(6):
        key = seen.key(users, feeds)
        repeat = seen.contains(key)
        _, first = np.unique(key, return_index=True)
        again = np.ones(len(key), dtype=bool)
        again[first] = False
        repeat |= again
        if not repeat.any():
            break
        idx = np.flatnonzero(repeat)
        feeds[idx] = _draw_feeds(world, users[idx], cdf, rng, samplers)
    key = seen.key(users, feeds)
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(key), dtype=bool)
    keep[first] = True
    keep &= ~seen.contains(key)
    users, feeds = users[keep], feeds[keep]
    seen.add(key[keep])

    device = world.user_device[users]
    switch = rng.random(len(users)) < k.device_switch
    device = np.where(switch, 3 - device, device)
    return users, feeds, device


def simulate_rows(world: World, progress: bool = False) -> Rows:
    """Exposures of days 1..15: de-duplicated, duplicate copies injected in days 1..13, and
    ordered like the real files (training rows by date_ then userid, test rows by userid).

    Rows are held compactly (int32 user and feed, int8 day and device: 10 bytes a row) and put
    in file order day by day; the draws and the order are those of one global
    ``lexsort((tie, userid, day))`` over all rows."""
    P, k = world.preset, world.knobs
    rng = _rng(world.seed, "exposure")
    F = world.n_feeds
    samplers = (GroupSampler(np.zeros(F, dtype=np.int64), 1),
                GroupSampler(world.feed_topic, P.n_topics),
                GroupSampler(world.feed_author, P.n_authors))
    expected = float((world.user_presence * world.user_activity).sum())
    n_dup_target = round(k.dup_rate * P.train_rows)
    day_w = _day_volume(k)
    base = (P.train_rows - n_dup_target) / (expected * day_w.sum())
    scales = list(base * day_w) + [P.test_rows / expected]

    seen = _SeenPairs(world.n_users, F)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i, day in enumerate(tqdm(range(1, TEST_DAY + 1), desc="exposures", unit="day",
                                 disable=not progress, file=sys.stderr, leave=False)):
        users, feeds, device = _day_rows(world, day, scales[i], rng, samplers, seen)
        parts.append((users.astype(np.int32), feeds.astype(np.int32), device.astype(np.int8)))
    del seen
    counts = np.array([len(u) for u, _, _ in parts], dtype=np.int64)
    ends = np.cumsum(counts)
    starts = ends - counts
    user, feed, device = (np.concatenate([x[j] for x in parts]) for j in range(3))
    del parts
    n_base = int(ends[-1])

    # a few re-exposures (duplicate pairs), both copies inside days 1..13; rows are in day
    # order, so the rows of days 1..13 are a prefix
    n_cand = int(ends[N_DAYS - 2])
    src = np.sort(rng.choice(n_cand, size=min(n_dup_target, n_cand), replace=False))
    src_day = np.searchsorted(ends, src, side="right").astype(np.int64) + 1
    copy_day = src_day + np.floor(rng.random(len(src)) * (N_DAYS - src_day)).astype(np.int64)
    dup_user, dup_feed, dup_device = user[src], feed[src], device[src]
    n = n_base + len(src)

    # file order: training rows by (date_, userid), test rows by userid; random within (a
    # permutation of all rows breaks ties: the same draws as rng.permutation(n))
    tie = rng.permutation(np.arange(n, dtype=np.int32 if n < 2**31 else np.int64))
    out_user = np.empty(n, dtype=np.int32)
    out_feed = np.empty(n, dtype=np.int32)
    out_day = np.empty(n, dtype=np.int8)
    out_device = np.empty(n, dtype=np.int8)
    pos = 0
    for d in range(1, TEST_DAY + 1):
        seg = slice(int(starts[d - 1]), int(ends[d - 1]))
        extra = np.flatnonzero(copy_day == d)
        u = np.concatenate([user[seg], dup_user[extra]])
        order = np.lexsort((np.concatenate([tie[seg], tie[n_base + extra]]), world.user_ids[u]))
        end = pos + len(order)
        out_user[pos:end] = u[order]
        out_feed[pos:end] = np.concatenate([feed[seg], dup_feed[extra]])[order]
        out_device[pos:end] = np.concatenate([device[seg], dup_device[extra]])[order]
        out_day[pos:end] = d
        pos = end
    return Rows(user=out_user, feed=out_feed, day=out_day, device=out_device,
                n_train=n - int(counts[-1]), n_duplicates=len(src))


# --------------------------------------------------------------------------- the actions

def action_logits(world: World, user: np.ndarray, feed: np.ndarray, day: np.ndarray,
                  device: np.ndarray) -> np.ndarray:
    """Logits of the 7 actions (ACTIONS order) without intercepts, float32 [n, 7]."""
    k, nm = world.knobs, world.norms
    user = user.astype(np.int64)
    feed = feed.astype(np.int64)
    t = ((day.astype(np.float32) - (N_DAYS + 2) / 2) / (N_DAYS / 2))[:, None]
    drift = world.user_drift[user] * t
    f = world.feed_factor[feed]
    pref = _rowdot(world.user_factor[user] + drift, f) / nm["pref"]
    pref_app = _rowdot(world.user_app[user] + drift, f) / nm["app"]
    pref_disc = _rowdot(world.user_disc[user] + drift, f) / nm["disc"]
    author = world.feed_author[feed]
    match = _rowdot(world.user_factor[user] + drift, world.author_factor[author]) / nm["author"]
    fav = (world.user_fav[user] == author[:, None]).any(axis=1)
    affinity = (0.5 * match + 0.85 * _hash_normal(user, author, world.seed)
                + k.fav_bonus * fav)
    q = world.feed_quality[feed]
    feed_group = (
        (q + world.feed_appeal[feed]) / np.sqrt(2.0),
        world.feed_discuss[feed],
        0.8 * world.author_charisma[author] + 0.6 * q,
    )
    pers_group = (pref_app, pref_disc, affinity)
    age = (day.astype(np.int64) - world.feed_release[feed]).astype(np.float32)
    fresh = 2.0 * np.exp(-age / 3.0) - 1.0
    length = -(np.log(world.feed_seconds[feed]) - np.log(20.0)) / 0.75
    dev2 = (device == 2).astype(np.float32)

    out = np.empty((len(user), len(ACTIONS)), dtype=np.float32)
    wf, wp, wc = np.sqrt(k.w_feed), np.sqrt(k.w_pers), np.sqrt(k.w_ctx)
    lf = k.feed_group_share
    for j, a in enumerate(ACTIONS):
        g = ACTION_GROUP[a]
        lp = k.pers_group_share[g]
        feed_part = np.sqrt(lf) * feed_group[g] + np.sqrt(1 - lf) * world.feed_own[feed, j]
        pers_part = np.sqrt(lp) * pers_group[g] + np.sqrt(1 - lp) * pref
        ctx = k.rec_coef[j] * fresh + k.len_coef[j] * length
        out[:, j] = (k.scale[j] * (wf * feed_part + wp * pers_part + wc * ctx)
                     + world.user_bias[user, j] + k.device_shift[j] * dev2)
    return out


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


ROW_CHUNK = 1 << 20


@dataclass
class Outcomes:
    """The outcomes of one chunk of rows."""
    prob: np.ndarray        # float32 [m, 7] true probabilities
    label: np.ndarray       # int8 [m, 7]
    play: np.ndarray        # int32 ms
    stay: np.ndarray        # int32 ms


CALIBRATION_ROWS = 2_000_000


def calibrate_intercepts(world: World, rows: Rows) -> np.ndarray:
    """Intercepts such that the mean true probability over days 1..14 (over a sample of
    CALIBRATION_ROWS training rows when there are more) hits the real positive rates."""
    rng = _rng(world.seed, "calibration")
    nt = rows.n_train
    if nt > CALIBRATION_ROWS:
        train = np.sort(rng.choice(nt, size=CALIBRATION_ROWS, replace=False))
    else:
        train = np.arange(nt)
    x = np.empty((len(train), len(ACTIONS)), dtype=np.float32)
    for sl in _chunks(len(train), ROW_CHUNK):
        r = train[sl]
        x[sl] = action_logits(world, rows.user[r], rows.feed[r], rows.day[r], rows.device[r])
    return np.array([calibrate_intercept(x[:, j], REAL_POSITIVE_RATES[a])
                     for j, a in enumerate(ACTIONS)], dtype=np.float32)


def null_intercepts() -> np.ndarray:
    rates = np.array([REAL_POSITIVE_RATES[a] for a in ACTIONS], np.float32)
    return np.log(rates / (1 - rates)).astype(np.float32)


def outcome_chunks(world: World, rows: Rows, intercept: np.ndarray,
                   null: bool = False) -> Iterator[tuple[slice, Outcomes]]:
    """True probabilities, sampled labels and play/stay, chunk by chunk (ROW_CHUNK rows in
    row order; the random draws depend on that chunking, so it is fixed).

    Labels go through a Gaussian copula: P(label=1) = p exactly, co-occurrence within groups.
    ``null``: the null world's outcomes: every label Bernoulli(the action's real positive rate),
    independent of the row, the user, the feed, the day, the other actions and play/stay (which
    are drawn as usual but from labels all 0).  The true probability of every row is that rate,
    so no model can beat 0.5 but by chance, and any day-14 figure above it is selection."""
    k = world.knobs
    n = len(rows.user)
    if null:
        rates = np.array([REAL_POSITIVE_RATES[a] for a in ACTIONS], np.float32)
        rng = _rng(world.seed, "null_labels")
        for sl in _chunks(n, ROW_CHUNK):
            m = sl.stop - sl.start
            label = (rng.random((m, len(ACTIONS)), dtype=np.float32) < rates).astype(np.int8)
            play, stay = _play_stay(world, rows, sl, rng.standard_normal(m, dtype=np.float32),
                                    np.zeros((m, len(ACTIONS)), np.int8), rng)
            yield sl, Outcomes(np.broadcast_to(rates, (m, len(ACTIONS))), label, play, stay)
        return
    rng = _rng(world.seed, "labels")
    g_idx = np.array([ACTION_GROUP[a] for a in ACTIONS])
    e, g = k.copula_engagement, k.copula_group
    for sl in _chunks(n, ROW_CHUNK):
        m = sl.stop - sl.start
        x = action_logits(world, rows.user[sl], rows.feed[sl], rows.day[sl], rows.device[sl])
        x += intercept
        prob = expit(x, out=x)
        engage = rng.standard_normal(m, dtype=np.float32)
        group = rng.standard_normal((m, len(GROUPS)), dtype=np.float32)
        own = rng.standard_normal((m, len(ACTIONS)), dtype=np.float32)
        z = np.sqrt(e) * engage[:, None] + np.sqrt(g) * group[:, g_idx] + np.sqrt(1 - e - g) * own
        label = (z < ndtri(np.clip(prob, 1e-12, 1 - 1e-7))).astype(np.int8)
        play, stay = _play_stay(world, rows, sl, -engage, label, rng)
        yield sl, Outcomes(prob, label, play, stay)


def _play_stay(world: World, rows: Rows, sl: slice, engaged: np.ndarray, label: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Watch time (ms) driven by preference, quality, the row's engagement and video length;
    stay adds time on the page (longer when reading or writing comments)."""
    m = len(engaged)
    feed = rows.feed[sl].astype(np.int64)
    user = rows.user[sl].astype(np.int64)
    secs = world.feed_seconds[feed].astype(np.float64)
    pref = _rowdot(world.user_factor[user], world.feed_factor[feed]) / world.norms["pref"]
    length = (np.log(secs) - np.log(20.0)) / 0.75
    watch = (0.5 * pref + 0.4 * world.feed_quality[feed] + 0.8 * engaged
             - 0.4 * length + 0.5 * rng.standard_normal(m) + 0.3)
    frac = 1.15 * expit(1.2 * watch)
    replay = rng.random(m) < 0.2 * expit(watch - 1.0)
    frac = frac + replay * (1.0 + rng.random(m))
    play = secs * 1000.0 * frac
    skip = rng.random(m) < 0.06
    play = np.where(skip, rng.integers(0, 1500, m), play)
    a = {name: label[:, j] for j, name in enumerate(ACTIONS)}
    extra = (rng.gamma(1.5, 1500.0, m) + a["read_comment"] * rng.exponential(10_000.0, m)
             + a["comment"] * rng.exponential(15_000.0, m))
    stay = play + extra
    short = rng.random(m) < 0.04                    # logging slack: stay a little below play
    stay = np.where(short, play * rng.uniform(0.85, 1.0, m), stay)
    cap = np.iinfo(np.int32).max
    return (np.clip(np.rint(play), 0, cap).astype(np.int32),
            np.clip(np.rint(stay), 0, cap).astype(np.int32))


# ------------------------------------------------------------------------------ content

@dataclass
class Vocab:
    """Topic vocabularies for text, keywords, tags and bgm (index -> external id maps)."""
    word_group: GroupSampler        # words by topic (topic T = background words)
    word_chars: np.ndarray          # [n_words, 3] char ids of each word (-1 = none)
    keyword_group: GroupSampler     # keywords by topic (topic T = general)
    tag_group: GroupSampler         # tags by topic
    song_group: GroupSampler        # songs by topic
    song_pop: np.ndarray
    song_singer: np.ndarray
    word_ids: np.ndarray
    char_ids: np.ndarray
    keyword_ids: np.ndarray
    tag_ids: np.ndarray
    song_ids: np.ndarray
    singer_ids: np.ndarray


def build_vocab(world: World) -> Vocab:
    P = world.preset
    T = P.n_topics
    rng = _rng(world.seed, "vocab")
    # 60% of words belong to a topic, the rest are background words shared by all
    word_topic = np.where(rng.random(P.n_words) < 0.6, rng.integers(0, T, P.n_words), T)
    word_group = GroupSampler(word_topic, T + 1).set_weights(_zipf_weights(P.n_words, rng))
    n_chars = rng.choice([1, 2, 3], size=P.n_words, p=[0.3, 0.45, 0.25])
    char_pop = _zipf_weights(P.n_chars, rng, 1.1)
    chars = rng.choice(P.n_chars, size=(P.n_words, 3), p=char_pop / char_pop.sum())
    word_chars = np.where(np.arange(3) < n_chars[:, None], chars, -1)
    kw_topic = np.where(rng.random(P.n_keywords) < 0.8, rng.integers(0, T, P.n_keywords), T)
    kw_group = GroupSampler(kw_topic, T + 1).set_weights(_zipf_weights(P.n_keywords, rng, 0.8))
    tag_topic = rng.permutation(np.arange(P.n_tags) % T)       # every topic has a tag
    tag_group = GroupSampler(tag_topic, T).set_weights(_zipf_weights(P.n_tags, rng, 0.6))
    song_topic = rng.integers(0, T, P.n_songs)
    song_pop = _zipf_weights(P.n_songs, rng, 0.9)
    song_group = GroupSampler(song_topic, T).set_weights(song_pop)
    singer_pop = _zipf_weights(P.n_singers, rng, 0.9)
    song_singer = rng.choice(P.n_singers, size=P.n_songs, p=singer_pop / singer_pop.sum())
    ids = _rng(world.seed, "vocab-ids")
    return Vocab(
        word_group=word_group, word_chars=word_chars, keyword_group=kw_group,
        tag_group=tag_group, song_group=song_group, song_pop=song_pop, song_singer=song_singer,
        word_ids=ids.permutation(P.n_words) + 1, char_ids=ids.permutation(P.n_chars) + 1,
        keyword_ids=ids.permutation(P.n_keywords) + 1, tag_ids=ids.permutation(P.n_tags) + 1,
        song_ids=ids.permutation(P.n_songs), singer_ids=ids.permutation(P.n_singers),
    )


def _lengths(rng: np.random.Generator, n: int, empty: float, mean: float, cap: int) -> np.ndarray:
    length = 1 + rng.poisson(mean * np.exp(0.5 * rng.standard_normal(n) - 0.125))
    return np.where(rng.random(n) < empty, 0, np.minimum(length, cap))


def _from_topic(sampler: GroupSampler, topics: np.ndarray, lengths: np.ndarray, cap: int,
                p_topic: float, general: int | None, rng: np.random.Generator,
                distinct: bool = False) -> np.ndarray:
    """[n, cap] index matrix (-1 beyond each row's length) drawn from the row's topic group
    with probability p_topic, else from the ``general`` group (or any topic if None)."""
    n = len(topics)
    groups = np.repeat(topics[:, None], cap, axis=1)
    other = rng.random((n, cap)) >= p_topic
    if general is None:
        groups = np.where(other, rng.integers(0, len(sampler.lo), (n, cap)), groups)
    else:
        groups = np.where(other, general, groups)
    flat = groups.ravel()
    out = np.full(flat.shape, -1, dtype=np.int64)
    ok = sampler.has_mass(flat)
    out[ok] = sampler.sample(flat[ok], rng.random(int(ok.sum())))
    out = out.reshape(n, cap)
    out[np.arange(cap) >= lengths[:, None]] = -1
    if distinct:          # id lists hold distinct ids: drop repeats, keep first
        for j in range(1, cap):
            out[:, j] = np.where((out[:, :j] == out[:, j:j + 1]).any(axis=1), -1, out[:, j])
    return out


def _external(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.where(ids >= 0, table[np.maximum(ids, 0)], -1)


def feed_info_cells(world: World, vocab: Vocab, feeds: np.ndarray,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """feed_info.csv values/cells of the feeds ``feeds`` (index space, in file order)."""
    T = world.preset.n_topics
    n = len(feeds)
    topic = world.feed_topic[feeds]
    cols: dict[str, np.ndarray] = {
        "feedid": world.feed_ids[feeds],
        "authorid": world.author_ids[world.feed_author[feeds]],
        "videoplayseconds": world.feed_seconds[feeds],
    }
    texts = {  # name: (empty share, mean words, max words)
        "description": (0.05, 18, 64), "ocr": (0.35, 15, 64), "asr": (0.45, 30, 128),
    }
    for name, (empty, mean, cap) in texts.items():
        words = _from_topic(vocab.word_group, topic, _lengths(rng, n, empty, mean, cap), cap,
                            0.55, T, rng)
        cols[name] = list_cells(_external(words, vocab.word_ids), " ")
        chars = np.where(words[..., None] >= 0, vocab.word_chars[np.maximum(words, 0)], -1)
        cols[f"{name}_char"] = list_cells(_external(chars.reshape(n, -1), vocab.char_ids), " ")

    has_bgm = rng.random(n) >= world.knobs.bgm_missing
    in_topic = (rng.random(n) < 0.5) & vocab.song_group.has_mass(topic)
    song = np.where(in_topic, vocab.song_group.sample(topic, rng.random(n)),
                    rng.choice(len(vocab.song_pop), size=n, p=vocab.song_pop / vocab.song_pop.sum()))
    cols["bgm_song_id"] = np.where(has_bgm, vocab.song_ids[song], -1)
    cols["bgm_singer_id"] = np.where(has_bgm, vocab.singer_ids[vocab.song_singer[song]], -1)

    kw = vocab.keyword_group
    manual_kw = _from_topic(kw, topic, np.where(rng.random(n) < 0.45, 0, rng.integers(1, 5, n)),
                            4, 0.9, T, rng, distinct=True)
    machine_kw = _from_topic(kw, topic, np.where(rng.random(n) < 0.2, 0, rng.integers(1, 6, n)),
                             5, 0.8, T, rng, distinct=True)
    cols["manual_keyword_list"] = list_cells(_external(manual_kw, vocab.keyword_ids), ";")
    cols["machine_keyword_list"] = list_cells(_external(machine_kw, vocab.keyword_ids), ";")

    manual_tag = _from_topic(vocab.tag_group, topic,
                             np.where(rng.random(n) < 0.02, 0, rng.integers(1, 5, n)),
                             4, 0.8, None, rng, distinct=True)
    cols["manual_tag_list"] = list_cells(_external(manual_tag, vocab.tag_ids), ";")
    machine_tag = _from_topic(vocab.tag_group, topic,
                              np.where(rng.random(n) < 0.08, 0, rng.integers(2, 12, n)),
                              11, 0.6, None, rng, distinct=True)
    on_topic = vocab.tag_group.order  # tags of the feed's topic get confident probabilities
    tag_topic = np.empty(len(on_topic), dtype=np.int64)
    tag_topic[on_topic] = np.repeat(np.arange(T), vocab.tag_group.ends - vocab.tag_group.starts)
    same = tag_topic[np.maximum(machine_tag, 0)] == topic[:, None]
    prob = np.where(same, rng.beta(5, 2, machine_tag.shape), rng.beta(1, 5, machine_tag.shape))
    units = np.clip(np.rint(prob * 1e8), 1, 10 ** 8 - 1).astype(np.int64)
    cols["machine_tag_list"] = tagprob_cells(_external(machine_tag, vocab.tag_ids), units)
    return cols


def embedding_units(world: World, feeds: np.ndarray, projection: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """feed_embedding values of ``feeds`` in 1e-4 units: content vector x projection + noise.
    The product is an explicit sum over K (no BLAS), so the bytes never depend on threads."""
    content = world.feed_content[feeds].astype(np.float64)
    emb = np.zeros((len(feeds), projection.shape[1]), dtype=np.float64)
    for k in range(projection.shape[0]):
        emb += content[:, k:k + 1] * projection[k]
    emb += world.knobs.embedding_noise * rng.standard_normal(emb.shape)
    return np.clip(np.rint(emb * 1e4), -99 * 10_000, 99 * 10_000).astype(np.int64)


def embedding_projection(world: World) -> np.ndarray:
    K = world.knobs.n_factors
    rng = _rng(world.seed, "projection")
    return rng.standard_normal((K, schema.EMBEDDING_DIM)) * (0.1 / np.sqrt(K))


# ------------------------------------------------------------------------------- writing

FEED_CHUNK = 4096


class _Means:
    """Column means of [m, 7] chunks over all their rows, summed in row order like
    ``values.mean(axis=0, dtype=np.float64)`` of all rows at once (the same float sums)."""

    def __init__(self) -> None:
        self.sum = np.zeros(len(ACTIONS), dtype=np.float64)
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        if len(values):
            stacked = np.concatenate([self.sum[None], np.asarray(values, dtype=np.float64)])
            self.sum = np.add.reduce(stacked, axis=0)
            self.n += len(values)

    def rounded(self) -> dict[str, float]:
        m = self.sum / self.n
        return {a: round(float(m[j]), 6) for j, a in enumerate(ACTIONS)}


def _write_rows(world: World, rows: Rows, chunks: Iterator[tuple[slice, Outcomes]],
                raw_dir: Path, truth_dir: Path, progress: bool) -> dict[str, _Means]:
    """One pass over the rows in order: user_action.csv, test_a.csv and the truth files
    (day14_prob.csv, test_truth.csv) from each chunk's outcomes, which are then dropped.
    Returns the running positive rates of the summary."""
    nt = rows.n_train
    means = {k: _Means() for k in ("true_prob_days1_14", "labels_days1_14", "true_prob_test",
                                   "labels_test")}
    with TableWriter(raw_dir / schema.USER_ACTION.filename, schema.USER_ACTION) as ua, \
            TableWriter(raw_dir / schema.TEST.filename, schema.TEST) as test, \
            TableWriter(truth_dir / TRUTH_DAY14.filename, TRUTH_DAY14) as day14, \
            TableWriter(truth_dir / TRUTH_TEST.filename, TRUTH_TEST) as truth:
        for sl, out in tqdm(chunks, total=-(-len(rows.user) // ROW_CHUNK), desc="actions",
                            unit="chunk", disable=not progress, file=sys.stderr, leave=False):
            m = sl.stop - sl.start
            k = min(max(nt - sl.start, 0), m)          # the chunk's training rows: [0, k)
            user = world.user_ids[rows.user[sl]]
            feed = world.feed_ids[rows.feed[sl]]
            day, device = rows.day[sl], rows.device[sl]
            if k:
                tr = slice(0, k)
                d = {"userid": user[tr], "feedid": feed[tr], "date_": day[tr],
                     "device": device[tr], "play": out.play[tr], "stay": out.stay[tr]}
                d.update({a: out.label[tr, j] for j, a in enumerate(ACTIONS)})
                ua.write(d)
                r = np.flatnonzero(day[tr] == N_DAYS)
                d = {"userid": user[r], "feedid": feed[r]}
                d.update({a: out.prob[r, j] for j, a in enumerate(ACTIONS)})
                day14.write(d)
                means["true_prob_days1_14"].add(out.prob[tr])
                means["labels_days1_14"].add(out.label[tr])
            if k < m:
                te = slice(k, m)
                d = {"userid": user[te], "feedid": feed[te], "device": device[te]}
                test.write(d)
                d.update({a: out.label[te, j] for j, a in enumerate(ACTIONS)})
                d.update({f"p_{a}": out.prob[te, j] for j, a in enumerate(ACTIONS)})
                truth.write(d)
                means["true_prob_test"].add(out.prob[te])
                means["labels_test"].add(out.label[te])
    return means


def _write_feed_files(world: World, raw_dir: Path, progress: bool) -> None:
    feed_order = np.argsort(world.feed_ids, kind="stable")
    vocab = build_vocab(world)
    rng = _rng(world.seed, "feed-info")
    write_table(raw_dir / schema.FEED_INFO.filename, schema.FEED_INFO, len(feed_order),
                lambda sl: feed_info_cells(world, vocab, feed_order[sl], rng), FEED_CHUNK, progress)

    proj = embedding_projection(world)
    rng_e = _rng(world.seed, "embedding")

    def embeddings(sl: slice) -> dict[str, np.ndarray]:
        feeds = feed_order[sl]
        trailing = rng_e.random(len(feeds)) < world.knobs.embedding_trailing_space
        return {"feedid": world.feed_ids[feeds],
                "feed_embedding": vector_cells(embedding_units(world, feeds, proj, rng_e), trailing)}

    write_table(raw_dir / schema.FEED_EMBEDDINGS.filename, schema.FEED_EMBEDDINGS,
                len(feed_order), embeddings, FEED_CHUNK // 2, progress)


def _counts(values: np.ndarray, size: int, chunk: int = 1 << 23) -> np.ndarray:
    """np.bincount(values, minlength=size) without an int64 copy of all values."""
    out = np.zeros(size, dtype=np.int64)
    for s in range(0, len(values), chunk):
        out += np.bincount(values[s:s + chunk], minlength=size)
    return out


def _summary(world: World, rows: Rows, means: dict[str, _Means], intercept: np.ndarray,
             null: bool = False) -> dict:
    P = world.preset
    nt = rows.n_train
    in_train = _counts(rows.feed[:nt], world.n_feeds) > 0
    test_feeds = np.flatnonzero(_counts(rows.feed[nt:], world.n_feeds))
    cold = ~in_train[test_feeds]
    cold_rows = ~in_train[rows.feed[nt:]]
    per_day = _counts(rows.day[:nt], N_DAYS + 1)
    return {
        "generator_version": GENERATOR_VERSION,
        "preset": P.name,
        "seed": world.seed,
        "null_world": bool(null),
        "sizes": {
            "users": world.n_users, "feeds": world.n_feeds, "authors": P.n_authors,
            "bgm_songs": P.n_songs, "bgm_singers": P.n_singers, "keywords": P.n_keywords,
            "tags": P.n_tags, "topics": P.n_topics, "words": P.n_words, "chars": P.n_chars,
            "user_action_rows": nt, "day14_rows": int(per_day[N_DAYS]),
            "test_rows": len(rows.user) - nt,
            "rows_per_day": per_day[1:].tolist(),
            "users_with_actions": int((_counts(rows.user[:nt], world.n_users) > 0).sum()),
            "feeds_in_actions": int(in_train.sum()),
            "duplicate_rows": rows.n_duplicates,
        },
        "cold_test_feed_share": round(float(cold.mean()), 4),
        "cold_test_row_share": round(float(cold_rows.mean()), 4),
        "positive_rates": {
            "target": dict(REAL_POSITIVE_RATES),
            **{k: v.rounded() for k, v in means.items()},
        },
        "intercepts": {a: round(float(intercept[j]), 6) for j, a in enumerate(ACTIONS)},
        "preset_config": asdict(P),
        "knobs": asdict(world.knobs),
    }


def world_is_current(world_dir: str | Path, preset: str, seed: int, null: bool = False) -> bool:
    """True if ``world_dir`` holds a complete world of this generator version, preset, seed and
    kind (``null``: the null world)."""
    world_dir = Path(world_dir)
    info = world_dir / TRUTH_DIRNAME / WORLD_JSON
    files = [world_dir / RAW_DIRNAME / s.filename for s in schema.FILES.values()]
    files += [world_dir / TRUTH_DIRNAME / s.filename for s in (TRUTH_DAY14, TRUTH_TEST)]
    if not info.exists() or not all(f.exists() for f in files):
        return False
    try:
        meta = json.loads(info.read_text())
    except ValueError:
        return False
    return (meta.get("generator_version") == GENERATOR_VERSION and meta.get("preset") == preset
            and meta.get("seed") == seed and bool(meta.get("null_world", False)) == bool(null))


class _Steps:
    """Wall time and cumulative peak memory after each generation step."""

    def __init__(self, verbose: bool):
        self.rows: list[dict] = []
        self.verbose = verbose
        self.t = time.perf_counter()

    def done(self, step: str) -> None:
        now = time.perf_counter()
        rec = {"step": step, "seconds": round(now - self.t, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
        self.rows.append(rec)
        self.t = now
        if self.verbose:
            print(f"[make_synthetic] {step}: {rec['seconds']:.1f} s, peak {rec['peak_rss_mb']:.0f} MB",
                  file=sys.stderr, flush=True)


def generate_world(preset: str | Preset, seed: int, out_dir: Path, progress: bool = False,
                   null: bool = False) -> dict:
    """Generate the world of (preset, seed) into ``out_dir`` (``wechat_algo_data1/`` and
    ``truth/``), built in a temporary folder and swapped into place when complete.

    ``null``: the same users, feeds, exposures and files, but labels independent of everything
    (:func:`outcome_chunks`); the truth holds the constant base rates.  ``preset``: a name of
    PRESETS or a :class:`Preset` (e.g. from :func:`scaled_preset`, for a size between them).

    Returns the world summary (also written to ``truth/world.json``) plus ``steps``: time and
    peak memory per step (kept out of world.json so reruns are byte-identical).
    """
    if isinstance(preset, str) and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    steps = _Steps(progress)
    world = build_world(preset, seed)
    steps.done("entities")
    rows = simulate_rows(world, progress)
    steps.done("exposures")
    intercept = null_intercepts() if null else calibrate_intercepts(world, rows)
    steps.done("calibration")
    with atomic_dir(out_dir) as tmp:
        raw, truth = tmp / RAW_DIRNAME, tmp / TRUTH_DIRNAME
        raw.mkdir(parents=True, exist_ok=True)
        truth.mkdir(parents=True, exist_ok=True)
        means = _write_rows(world, rows, outcome_chunks(world, rows, intercept, null), raw, truth,
                            progress)
        steps.done("actions, user_action, test and truth files")
        _write_feed_files(world, raw, progress)
        steps.done("feed files")
        summary = _summary(world, rows, means, intercept, null)
        write_json(summary, truth / WORLD_JSON)
        steps.done("summary")
    return {**summary, "steps": steps.rows}
