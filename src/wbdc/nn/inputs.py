"""The input layer: id embeddings, pooled multi-hot fields, pretrained tables and dense features.

A batch is a dict of tensors (see ``wbdc.nn.data.EncodedArrays.batch``):

* ``cat``  int ``[B, C]``: vocabulary indices of the sparse ids, 0 = unseen in training;
* ``keys`` int ``[B, K]``: row of the batch's feed (author, ...) in the side tables, 0 = unknown;
* ``dense`` float ``[B, D]``: standardised dense features.

Side tables hang off a key slot: a multi-hot field is a padded ``[n_rows, L]`` matrix of token
indices (0 = padding, excluded from the mean) pooled by ``nn.EmbeddingBag``; a pretrained table
is an ``nn.Embedding.from_pretrained`` matrix (row 0 = zeros for unknown keys), frozen or not.

With ``interactions="dot"`` the layer also emits the inner product of every pair of learned
field vectors of width ``emb_dim`` (the id embeddings and the pooled multi-hot fields of that
width): the factorisation-machine / DLRM interaction, which an MLP over the concatenated
vectors learns poorly (a user-feed dot product is the collaborative signal itself).
With ``interactions="content"`` it emits instead the element-wise product of the user's id
embedding and a learned linear map of the candidate's pretrained vectors (the feed's
feed_embedding PCA and word2vec rows, its author's): the generalised matrix factorisation of
NeuMF with a content item tower, a user-by-content bilinear form each tower weighs per task,
known for a feed never seen in training too.

The history block (``HistoryAttention``, DIN-style) hangs off the last ``keys`` column: the
row's (user, day) row of a ``[n_pairs + 1, N]`` table of the user's last N feeds before the day
and the action bits of each, pooled by attention against the candidate feed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn


@dataclass
class BagField:
    """A multi-hot field pooled by mean: ``lists[row]`` holds token indices (0 = padding)."""
    name: str
    lists: Tensor          # int [n_rows, max_len]
    n_tokens: int          # vocabulary size including padding index 0
    key_slot: int          # column of batch["keys"] that indexes ``lists``


@dataclass
class HistoryField:
    """The user's last exposures before the row's day (``wbdc.nn.history``), on feed rows."""
    feeds: Tensor          # int32 [n_pairs + 1, N]: feed row (the ``feedid`` key's rows), 0 = padding
    bits: Tensor           # uint8 [n_pairs + 1, N]: the 7 action bits of each exposure
    length: Tensor         # int16 [n_pairs + 1]: real entries, right-aligned; row 0 = no history
    key_slot: int          # column of batch["keys"] holding the (user, day) row
    feed_slot: int         # column of batch["keys"] holding the candidate's feed row
    n_feed_rows: int


@dataclass
class PretrainedTable:
    name: str
    matrix: Tensor         # float32 [n_rows, dim]; row 0 = unknown key
    key_slot: int


class HistoryAttention(nn.Module):
    """Target attention over the user's recent exposures (Deep Interest Network, Zhou et al.
    2018), one block any architecture reads through the input layer.

    A feed's vector is a learned embedding plus a linear map of its pretrained feed vectors
    (PCA of feed_embedding, word2vec), computed for the whole feed table once per batch; an
    exposure adds an embedding of what the user did with it (128 action-bit patterns).  The
    candidate feed's vector is the query: bilinear scores, softmax over the real entries.
    Output ``[attention-pooled | mean | pooled * query]`` (``3 * dim``); zeros for a user with
    no history.
    """

    N_PATTERNS = 128        # 7 action bits

    def __init__(self, field: HistoryField, dim: int, pretrained_dims: Sequence[int] = ()):
        super().__init__()
        self.key_slot, self.feed_slot = int(field.key_slot), int(field.feed_slot)
        self.dim = int(dim)
        self.register_buffer("feeds", field.feeds.to(torch.int32), persistent=False)
        self.register_buffer("bits", field.bits.to(torch.uint8), persistent=False)
        self.register_buffer("length", field.length.to(torch.int32), persistent=False)   # gloo broadcasts no int16
        self.item = nn.Embedding(int(field.n_feed_rows), self.dim)
        nn.init.normal_(self.item.weight, std=0.05)
        with torch.no_grad():
            self.item.weight[0].zero_()
        width = int(sum(pretrained_dims))
        self.pretrained_proj = nn.Linear(width, self.dim, bias=False) if width else None
        self.action = nn.Embedding(self.N_PATTERNS, self.dim)
        nn.init.normal_(self.action.weight, std=0.05)
        self.query = nn.Linear(self.dim, self.dim, bias=False)
        self.output_dim = 3 * self.dim

    def forward(self, keys: Tensor, pretrained: Sequence[Tensor] = ()) -> Tensor:
        """``keys``: the batch's key columns; ``pretrained``: the feed-keyed pretrained tables."""
        table = self.item.weight
        if self.pretrained_proj is not None:
            table = table + self.pretrained_proj(torch.cat(list(pretrained), dim=1))
        pair = keys[:, self.key_slot]
        rows = self.feeds.index_select(0, pair)                         # [B, N]
        n = self.length.index_select(0, pair).long()                    # [B]
        B, N = rows.shape
        h = table.index_select(0, rows.reshape(-1)).view(B, N, -1) \
            + self.action(self.bits.index_select(0, pair).long())       # [B, N, d]
        q = table.index_select(0, keys[:, self.feed_slot])              # [B, d]
        real = torch.arange(N, device=rows.device).unsqueeze(0) >= (N - n).unsqueeze(1)
        score = torch.bmm(h, self.query(q).unsqueeze(-1).to(h.dtype)).squeeze(-1) / math.sqrt(self.dim)
        w = torch.softmax(score.float().masked_fill(~real, -1e9), dim=1) * real
        pooled = torch.bmm(w.unsqueeze(1).to(h.dtype), h).squeeze(1)
        mean = (h * real.unsqueeze(-1)).sum(1) / n.clamp(min=1).unsqueeze(1)
        return torch.cat([pooled, mean.to(pooled.dtype), pooled * q.to(pooled.dtype)], dim=1)


class InputLayer(nn.Module):
    """Concatenates ``[cat embeddings | pooled bags | history | pretrained vectors | dense]``.

    All sparse id columns share one embedding table (offset per column) so a batch costs one
    lookup and yields one sparse gradient.
    """

    def __init__(self, cat_cardinalities: Sequence[int], emb_dim: int, n_dense: int,
                 bags: Sequence[BagField] = (), pretrained: Sequence[PretrainedTable] = (),
                 bag_dim: int | None = None, pretrained_trainable: bool = False,
                 sparse: bool = False, history: HistoryField | None = None,
                 history_dim: int = 32, interactions: str = "none", user_slot: int | None = None):
        super().__init__()
        if interactions not in ("none", "dot", "content"):
            raise ValueError(f"nn.embedding.interactions={interactions!r}: expected none, dot or content")
        if interactions == "content" and (user_slot is None or not pretrained):
            raise ValueError("nn.embedding.interactions=content: needs userid among "
                             "nn.features.categorical and at least one pretrained table")
        cards = [int(c) for c in cat_cardinalities]
        self.n_cat, self.n_dense, self.emb_dim = len(cards), int(n_dense), int(emb_dim)
        offsets = torch.tensor([0, *cards[:-1]], dtype=torch.long).cumsum(0) if cards else \
            torch.zeros(0, dtype=torch.long)
        self.register_buffer("cat_offsets", offsets.to(torch.int32), persistent=False)
        self.cat_embedding = nn.Embedding(max(sum(cards), 1), emb_dim, sparse=sparse)
        nn.init.normal_(self.cat_embedding.weight, std=0.05)
        bag_dim = int(bag_dim or emb_dim)
        self.bag_slots = [b.key_slot for b in bags]
        self.bag_names = [b.name for b in bags]
        self.bags = nn.ModuleList()
        for i, b in enumerate(bags):
            bag = nn.EmbeddingBag(b.n_tokens, bag_dim, mode="mean", padding_idx=0, sparse=sparse)
            nn.init.normal_(bag.weight, std=0.05)
            with torch.no_grad():
                bag.weight[0].zero_()
            self.bags.append(bag)
            self.register_buffer(f"bag_lists_{i}", b.lists.to(torch.int32))
        self.pretrained_slots = [p.key_slot for p in pretrained]
        self.pretrained_names = [p.name for p in pretrained]
        self.pretrained = nn.ModuleList(
            nn.Embedding.from_pretrained(p.matrix.float(), freeze=not pretrained_trainable,
                                         sparse=sparse)
            for p in pretrained)
        self.history = None
        self.history_tables: list[int] = []       # the pretrained tables keyed like the feed
        if history is not None:
            self.history_tables = [i for i, p in enumerate(pretrained) if p.key_slot == history.feed_slot]
            self.history = HistoryAttention(history, history_dim,
                                            [int(pretrained[i].matrix.shape[1]) for i in self.history_tables])
        history_dim = self.history.output_dim if self.history is not None else 0
        pretrained_dim = sum(int(p.matrix.shape[1]) for p in pretrained)
        #: the fields in the pairwise inner products: the id columns, then the bags of emb_dim
        self.dot_bags = len(self.bags) if bag_dim == self.emb_dim else 0
        n_fields = self.n_cat + self.dot_bags if interactions == "dot" else 0
        pairs = torch.triu_indices(n_fields, n_fields, offset=1) if n_fields > 1 else \
            torch.zeros(2, 0, dtype=torch.long)
        self.register_buffer("pair_index", (pairs[0] * n_fields + pairs[1]).to(torch.long),
                             persistent=False)
        n_pairs = int(self.pair_index.numel())
        #: interactions=content: the user's embedding times a map of the pretrained vectors
        self.user_slot = user_slot if interactions == "content" else None
        self.content = nn.Linear(pretrained_dim, self.emb_dim, bias=False) \
            if self.user_slot is not None else None
        n_content = self.emb_dim if self.content is not None else 0
        self.output_dim = (self.n_cat * self.emb_dim + len(self.bags) * bag_dim + history_dim
                           + n_pairs + n_content + pretrained_dim + self.n_dense)
        #: the leading output columns that carry a gradient (the learned tables and their
        #: products); the rest (frozen pretrained vectors, dense features) are constants
        self.grad_cols = (self.n_cat * self.emb_dim + len(self.bags) * bag_dim + history_dim
                          + n_pairs + n_content + (pretrained_dim if pretrained_trainable else 0))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """``[cat embeddings | pooled bags | history | pretrained | dense]``: the learned columns
        first (``grad_cols``), so the layers reading this vector can skip the constants' gradient."""
        parts = []
        if self.n_cat:
            cat = batch["cat"]
            parts.append(self.cat_embedding(cat + self.cat_offsets).flatten(1))
        if len(self.bags) or len(self.pretrained) or self.history is not None:
            keys = batch["keys"]
        for i, bag in enumerate(self.bags):
            lists = getattr(self, f"bag_lists_{i}")
            parts.append(bag(lists.index_select(0, keys[:, self.bag_slots[i]])))
        if self.history is not None:
            tables = [self.pretrained[i].weight for i in self.history_tables]
            parts.append(self.history(keys, tables).to(self.cat_embedding.weight.dtype))
        if self.pair_index.numel():
            parts.append(self._dots(parts))
        vectors = [table(keys[:, slot]) for slot, table in zip(self.pretrained_slots, self.pretrained)]
        if self.content is not None:
            user = parts[0][:, self.user_slot * self.emb_dim:(self.user_slot + 1) * self.emb_dim]
            content = self.content(torch.cat(vectors, dim=1).to(self.content.weight.dtype))
            parts.append(user * content.to(user.dtype))
        parts.extend(vectors)
        if self.n_dense:
            parts.append(batch["dense"])
        return torch.cat(parts, dim=1)

    def _dots(self, parts: list[Tensor]) -> Tensor:
        """``[B, n_pairs]``: the inner product of every pair of fields (i < j), in the order of
        ``torch.triu_indices``; ``parts`` starts with the id embeddings and then the bags."""
        start = 1 if self.n_cat else 0
        fields = [parts[0].view(parts[0].shape[0], self.n_cat, self.emb_dim)] if self.n_cat else []
        fields += [p.unsqueeze(1) for p in parts[start:start + self.dot_bags]]
        f = torch.cat(fields, dim=1)                                     # [B, F, d]
        gram = torch.bmm(f, f.transpose(1, 2)).flatten(1)                # [B, F * F]
        return gram.index_select(1, self.pair_index)
