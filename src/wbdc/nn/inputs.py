"""The input layer: id embeddings, pooled multi-hot fields, pretrained tables and dense features.

A batch is a dict of tensors (see ``wbdc.nn.data.EncodedArrays.batch``):

* ``cat``  int ``[B, C]``: vocabulary indices of the sparse ids, 0 = unseen in training;
* ``keys`` int ``[B, K]``: row of the batch's feed (author, ...) in the side tables, 0 = unknown;
* ``dense`` float ``[B, D]``: standardised dense features.

Side tables hang off a key slot: a multi-hot field is a padded ``[n_rows, L]`` matrix of token
indices (0 = padding, excluded from the mean) pooled by ``nn.EmbeddingBag``; a pretrained table
is an ``nn.Embedding.from_pretrained`` matrix (row 0 = zeros for unknown keys), frozen or not.
"""
from __future__ import annotations

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
class PretrainedTable:
    name: str
    matrix: Tensor         # float32 [n_rows, dim]; row 0 = unknown key
    key_slot: int


class InputLayer(nn.Module):
    """Concatenates ``[cat embeddings | pooled bags | pretrained vectors | dense]``.

    All sparse id columns share one embedding table (offset per column) so a batch costs one
    lookup and yields one sparse gradient.
    """

    def __init__(self, cat_cardinalities: Sequence[int], emb_dim: int, n_dense: int,
                 bags: Sequence[BagField] = (), pretrained: Sequence[PretrainedTable] = (),
                 bag_dim: int | None = None, pretrained_trainable: bool = False,
                 sparse: bool = False):
        super().__init__()
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
        self.output_dim = (self.n_cat * self.emb_dim + len(self.bags) * bag_dim
                           + sum(int(p.matrix.shape[1]) for p in pretrained) + self.n_dense)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        parts = []
        if self.n_cat:
            cat = batch["cat"]
            parts.append(self.cat_embedding(cat + self.cat_offsets).flatten(1))
        if len(self.bags) or len(self.pretrained):
            keys = batch["keys"]
        for i, bag in enumerate(self.bags):
            lists = getattr(self, f"bag_lists_{i}")
            parts.append(bag(lists.index_select(0, keys[:, self.bag_slots[i]])))
        for slot, table in zip(self.pretrained_slots, self.pretrained):
            parts.append(table(keys[:, slot]))
        if self.n_dense:
            parts.append(batch["dense"])
        return torch.cat(parts, dim=1)
