"""A linear-chain CRF over the entity head's word tags: a BIO loss that scores whole tag sequences.

The paper trains each word's tag alone (cross-entropy) and the service decodes the best well-formed BIO
sequence (Viterbi, `app/text/tags.py: viterbi_bio`). A CRF trains what is decoded: the log-likelihood of
the gold sequence among all well-formed ones, with learned scores for each label after each label and for
a sentence's first and last label. The scores travel in the checkpoint's `tagger.json` and the bundle's
manifest (`Transitions`), and the service's Viterbi adds them: serving costs the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from app.text.tags import Transitions, bio_allowed

# Forbidden transitions score this instead of -inf: the forward algorithm's logsumexp stays finite and its
# gradients defined, and no path through one can win.
FORBIDDEN = -1e4


class BioCRF(nn.Module):
    def __init__(self, labels: Sequence[str], transitions: Transitions | None = None) -> None:
        super().__init__()
        size = len(labels)
        self.pair = nn.Parameter(torch.zeros(size, size))
        self.start = nn.Parameter(torch.zeros(size))
        self.end = nn.Parameter(torch.zeros(size))
        if transitions is not None:
            with torch.no_grad():
                self.pair.copy_(torch.tensor(transitions.pair))
                self.start.copy_(torch.tensor(transitions.start))
                self.end.copy_(torch.tensor(transitions.end))
        allowed, first_allowed = bio_allowed(tuple(labels))
        self.register_buffer("forbid_pair", torch.tensor(~allowed), persistent=False)
        self.register_buffer("forbid_first", torch.tensor(~first_allowed), persistent=False)
        # A window of a sentence longer than the model may begin inside an entity: its first gold tag,
        # I-X, is read as B-X, the only way a well-formed sequence can start there.
        begin = [labels.index(f"B-{lab[2:]}") if lab.startswith("I-") else j for j, lab in enumerate(labels)]
        self.register_buffer("as_first", torch.tensor(begin), persistent=False)

    def transitions(self) -> Transitions:
        return Transitions(
            tuple(self.start.tolist()), tuple(tuple(r) for r in self.pair.tolist()), tuple(self.end.tolist())
        )

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pair.masked_fill(self.forbid_pair, FORBIDDEN)
        start = self.start.masked_fill(self.forbid_first, FORBIDDEN)
        return pair, start

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of the gold `tags` [batch, words] under `emissions` [batch, words,
        labels]; `mask` [batch, words] marks each sentence's words, a prefix of every row (rows without a
        word add nothing)."""
        emissions = emissions.float()
        mask = mask.bool()
        rows = mask[:, 0]
        if not rows.any():
            return emissions.sum() * 0.0
        emissions, tags, mask = emissions[rows], tags[rows].clamp(min=0), mask[rows]
        tags = torch.cat([self.as_first[tags[:, :1]], tags[:, 1:]], dim=1)
        pair, start = self._scores()
        words = emissions.shape[1]
        steps = mask.float()
        # The gold path's score, all words at once.
        gold = start[tags[:, 0]] + (emissions.gather(2, tags.unsqueeze(2)).squeeze(2) * steps).sum(1)
        gold = gold + (pair[tags[:, :-1], tags[:, 1:]] * steps[:, 1:]).sum(1)
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1)).squeeze(1)
        gold = gold + self.end[last]
        # Every path's, by the forward algorithm.
        alpha = start + emissions[:, 0]
        for k in range(1, words):
            step = torch.logsumexp(alpha.unsqueeze(2) + pair.unsqueeze(0), dim=1) + emissions[:, k]
            alpha = torch.where(mask[:, k : k + 1], step, alpha)
        total = torch.logsumexp(alpha + self.end, dim=1)
        return (total - gold).sum()
