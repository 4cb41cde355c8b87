"""feed_embedding PCA: the official 512-d multimodal feed vectors reduced to k dims.

The PCA is fitted once on the whole feed-embedding table (no label involved) with a fixed
``random_state``.  The user-feed affinity of a row of day d is the cosine between the
candidate feed's reduced vector and the mean reduced vector of the feeds the user engaged with
(any of the 7 actions) on days strictly before d; 0 when the user has no such feed.  The
engaged rows reach the builder only as a DailyTable cut with ``before(d)``.
"""
from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA


def fit_pca(embeddings: np.ndarray, dim: int, seed: int) -> tuple[np.ndarray, float]:
    """(reduced float32 [n, k], explained variance ratio); k = min(dim, n_feeds, 512)."""
    k = int(min(dim, embeddings.shape[0], embeddings.shape[1]))
    pca = PCA(n_components=k, random_state=int(seed))
    reduced = pca.fit_transform(embeddings.astype(np.float32, copy=False))
    return reduced.astype(np.float32), float(pca.explained_variance_ratio_.sum())
