"""word2vec (gensim 4) on per-user exposure sequences: feed vectors, author vectors and
per-(user, day) history vectors.

Sentences: for each user, the feeds (or their authors) in order of day, then file order, over
every exposure row -- days 1..14 of the actions *and* the test rows (day 15).  Only exposures
are used, never labels, so training on the test day's exposures does not leak.  A user's
sequence longer than ``max_sentence_len`` (gensim silently truncates sentences past 10,000
tokens) is cut into consecutive chunks.

Out of core: the sentences are written once to a text corpus (one sentence a line, tokens
separated by spaces), user bucket after user bucket -- buckets are ascending user-id ranges, so
the file lists users in id order whatever the number of buckets -- and gensim streams the file
(``LineSentence``) on every epoch instead of holding 70M+ tokens as Python lists.  With one worker
this trains exactly the model the in-memory list of the same sentences would give.
``w2v.corpus_file: true`` hands the file to gensim's ``corpus_file`` mode instead: its threads
read their own byte ranges of the file, which scales with ``workers`` but gives other (and, with
more than one worker, run-to-run varying) vectors.

Determinism: gensim seeds its initial vectors and sampling from ``seed``, but with
``workers > 1`` the threads interleave their updates in an order the OS decides, so two runs
give slightly different vectors.  Only ``workers == 1`` is bit-reproducible; the config's
``w2v.deterministic: true`` forces it (the tests use that).

The user vector for target day d is the mean of the vectors of the feeds (authors) the user
was exposed to on days strictly before d; a user with no earlier exposure gets zeros.
"""
from __future__ import annotations

import logging

import numpy as np

from .history import DailyTable, aggregate_vectors

GENSIM_MAX_SENTENCE = 10_000


def user_sequences(user: np.ndarray, item: np.ndarray, day: np.ndarray,
                   max_len: int = GENSIM_MAX_SENTENCE) -> list[list[str]]:
    """Token lists (str ids) per user ordered by (day, row order), chunked to ``max_len``."""
    max_len = min(int(max_len), GENSIM_MAX_SENTENCE)
    order = np.lexsort((np.arange(len(user)), day, user))
    u, it = user[order], item[order]
    vocab = np.array([str(i) for i in range(int(it.max(initial=0)) + 1)], dtype=object)
    tokens = vocab[it]
    new_user = np.r_[True, u[1:] != u[:-1]] if len(u) else np.zeros(0, bool)
    start_idx = np.flatnonzero(new_user)
    # position inside the user's sequence; cut every max_len tokens too
    pos = np.arange(len(u)) - np.repeat(start_idx, np.diff(np.r_[start_idx, len(u)]))
    cuts = np.flatnonzero(new_user | ((pos % max_len) == 0))
    return [chunk.tolist() for chunk in np.split(tokens, cuts[1:])] if len(u) else []


def write_sentences(f, sentences: list[list[str]]) -> int:
    """Append sentences to an open text corpus; returns the number of tokens written."""
    n = 0
    for sent in sentences:
        f.write(" ".join(sent))
        f.write("\n")
        n += len(sent)
    return n


def train_word2vec(corpus, cfg: dict, seed: int, workers: int, corpus_file: bool = False,
                   max_len: int = GENSIM_MAX_SENTENCE):
    """Train one gensim Word2Vec on a corpus path (streamed with ``LineSentence``, or handed to
    gensim's ``corpus_file`` mode) or an in-memory list of sentences; returns its KeyedVectors."""
    from gensim.models import Word2Vec
    from gensim.models.word2vec import LineSentence

    logging.getLogger("gensim").setLevel(logging.WARNING)
    kw = dict(vector_size=int(cfg["dim"]), window=int(cfg["window"]), min_count=int(cfg["min_count"]),
              sg=int(cfg["sg"]), negative=int(cfg["negative"]), sample=float(cfg["sample"]),
              epochs=int(cfg["epochs"]), seed=int(seed), workers=int(workers))
    if isinstance(corpus, list):
        return Word2Vec(sentences=corpus, **kw).wv
    if corpus_file:
        return Word2Vec(corpus_file=str(corpus), **kw).wv
    return Word2Vec(sentences=LineSentence(str(corpus), max_sentence_length=int(max_len)), **kw).wv


def vector_table(wv, ids: np.ndarray) -> np.ndarray:
    """float32 [len(ids), dim]: the vector of each id, zeros for ids outside the vocabulary."""
    out = np.zeros((len(ids), wv.vector_size), dtype=np.float32)
    k2i = wv.key_to_index
    rows = np.array([k2i.get(str(int(i)), -1) for i in ids], dtype=np.int64)
    ok = rows >= 0
    out[ok] = wv.vectors[rows[ok]]
    return out


def user_history_table(user: np.ndarray, day: np.ndarray, item_row: np.ndarray,
                       item_vectors: np.ndarray, n_users: int) -> DailyTable:
    """Per-(user, day) sums of the exposed items' vectors (exposure rows of days <= 14)."""
    return aggregate_vectors(user, day, n_users, item_row, item_vectors)
