"""BCNN and ABCNN-1/2/3 (Yin, Schütze, Xiang and Zhou 2016): CNNs with attention for sentence pairs.

Shape legend: B batch, T0 / T1 words of the first / second sentence, s = ``max_len``, E embedding
dim, K convolution channels, w window, C classes.

The match score of two feature vectors is ``1 / (1 + |x - y|)`` with ``|.|`` the Euclidean distance; the
attention matrix A (B, T0, T1) holds it for every pair of positions of the two sentences, and 0
where either position is padding (:func:`match_matrix`).

One block, the same weights for both sentences:

1. ABCNN-1 (attention *before* convolution): A between the word embeddings. Attention feature
   maps F0_a = A W0ᵀ (B, T0, E) and F1_a = Aᵀ W1ᵀ (B, T1, E), where W0, W1 (E, s) read a row of
   match scores padded to s = ``max_len``; each sentence's convolution reads [F_r; F_a], the
   embeddings and the attention features as two channels (2E per position).
2. Wide convolution: window w, w - 1 zeros on each side, tanh: (B, T + w - 1, K).
3. Pooling back to one vector per word, (B, T, K), over w consecutive windows: BCNN and ABCNN-1
   average them (w-ap); ABCNN-2 (attention *after* convolution) builds A between the two
   convolution outputs and sums the windows weighted by A's row sums (first sentence) resp.
   column sums (second sentence).
4. all-ap: the mean over the sentence's real positions -> v0, v1 (B, K);
   ``logits = Linear([v0; v1; v0 ⊙ v1; |v0 - v1|])``.

ABCNN-3 is ABCNN-1 and ABCNN-2 at once. One block only (the paper stacks up to three).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AttentionError, shape_str
from . import limits
from .encoders import Classified, check_fields, real_positions

__all__ = ["ABCNN", "PLACES", "ABCNNConfig", "match_matrix"]

PLACES = ("none", "before", "after", "both")  # where attention sits: BCNN, ABCNN-1, ABCNN-2, ABCNN-3


@dataclass
class ABCNNConfig:
    vocab: int  # input words, specials and <unk> included
    classes: int = 2  # C: match or not
    attention: str = "before"  # none | before | after | both; the model name (bcnn, abcnn1/2/3) fixes it
    embed_dim: int = 64  # E
    channels: int = 64  # K feature maps of the convolution
    width: int = 3  # w: words per convolution window and windows per pooling step
    max_len: int = 64  # s: longest sentence; ABCNN-1's W0, W1 read s match scores
    dropout: float = 0.1  # on the pair's features before the output layer

    def __post_init__(self):
        check_fields(self, ("vocab", "classes", "embed_dim", "channels", "width", "max_len"))
        limits.check_fields(
            self, symbols=("vocab", "classes"), widths=("embed_dim", "channels"), lengths=("width", "max_len")
        )
        if self.attention not in PLACES:
            raise AttentionError(f"attention={self.attention!r} is unknown; expected one of {PLACES}")
        limits.check_size(self, ("vocab", "classes", "embed_dim", "channels", "width", "max_len"))

    def size(self) -> int:
        """At least the parameters of :class:`ABCNN` (at most twice them), for
        :func:`~attnkit.models.limits.check_size`."""
        before = self.attention in ("before", "both")
        return (
            self.vocab * self.embed_dim
            + (2 * self.max_len * self.embed_dim if before else 0)  # W0, W1
            + (self.embed_dim * (2 if before else 1) * self.width + 1) * self.channels  # the convolution
            + limits.linear_size(4 * self.channels, self.classes)
        )


def match_matrix(x: Tensor, y: Tensor, x_mask: Tensor | None = None, y_mask: Tensor | None = None) -> Tensor:
    """A[b, i, j] = 1 / (1 + ‖x[b, i] - y[b, j]‖₂) for ``x`` (B, Tx, D) and ``y`` (B, Ty, D); 0
    where ``x_mask`` (B, Tx) or ``y_mask`` (B, Ty) is False (True = real position).

    >>> match_matrix(torch.tensor([[[0.0, 0.0], [3.0, 4.0]]]), torch.tensor([[[0.0, 0.0]]]))
    tensor([[[1.0000],
             [0.1667]]])
    """
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[-1] != y.shape[-1]:
        raise AttentionError(
            f"x has shape {shape_str(x.shape)} and y {shape_str(y.shape)} but expected (B, Tx, D) and (B, Ty, D)"
        )
    dist = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")  # (B, Tx, Ty), exact at 0
    a = 1.0 / (1.0 + dist)
    if x_mask is not None:
        a = a * x_mask.unsqueeze(-1)
    if y_mask is not None:
        a = a * y_mask.unsqueeze(-2)
    return a


class ABCNN(nn.Module):
    """BCNN (``attention="none"``), ABCNN-1 (``"before"``), ABCNN-2 (``"after"``), ABCNN-3 (``"both"``).

    >>> model = ABCNN(ABCNNConfig(vocab=20, attention="both", embed_dim=4, channels=4, max_len=5)).eval()
    >>> out = model(torch.tensor([[4, 5, 6], [7, 0, 0]]), torch.tensor([[4, 9], [8, 9]]))
    >>> out.logits.shape, out.matrix.shape, out.conv_matrix.shape, out.matrix[1, 1:].abs().sum().item()
    (torch.Size([2, 2]), torch.Size([2, 3, 2]), torch.Size([2, 5, 4]), 0.0)
    """

    def __init__(self, config: ABCNNConfig):
        super().__init__()
        self.config = cfg = config
        self.before, self.after = cfg.attention in ("before", "both"), cfg.attention in ("after", "both")
        self.embed = nn.Embedding(cfg.vocab, cfg.embed_dim, padding_idx=0)
        if self.before:
            self.w0 = nn.Linear(cfg.max_len, cfg.embed_dim, bias=False)  # W0 (E, s)
            self.w1 = nn.Linear(cfg.max_len, cfg.embed_dim, bias=False)  # W1 (E, s)
        channels_in = cfg.embed_dim * (2 if self.before else 1)
        self.conv = nn.Conv1d(channels_in, cfg.channels, cfg.width, padding=cfg.width - 1)  # wide convolution
        self.out = nn.Linear(4 * cfg.channels, cfg.classes)
        self.drop = nn.Dropout(cfg.dropout)

    def extra_repr(self) -> str:
        return f"attention={self.config.attention!r}"

    def _convolve(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, E_in) with zeros at padding -> windows (B, T + w - 1, K) and their mask: window k
        covers words k - w + 1 .. k and is real when it covers a real word."""
        w = self.config.width
        c = torch.tanh(self.conv(x.transpose(1, 2))).transpose(1, 2)  # (B, T + w - 1, K)
        lengths = mask.sum(-1, keepdim=True)  # (B, 1)
        window_mask = torch.arange(c.shape[1], device=x.device) < lengths + w - 1  # (B, T + w - 1)
        return c * window_mask.unsqueeze(-1), window_mask

    def _pool(self, c: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        """Σ of w consecutive windows weighted by ``weights`` (B, T + w - 1), then the mean over the
        real words (all-ap) -> (B, K)."""
        w = self.config.width
        weighted = (c * weights.unsqueeze(-1)).transpose(1, 2)  # (B, K, T + w - 1)
        per_word = F.avg_pool1d(weighted, w, stride=1).transpose(1, 2) * w  # (B, T, K)
        real = mask.unsqueeze(-1)  # (B, T, 1)
        return (per_word * real).sum(1) / real.sum(1)

    def forward(self, first: Tensor, second: Tensor) -> Classified:
        """``first`` (B, T0), ``second`` (B, T1) word ids -> logits (B, C) and the attention
        matrices (``matrix`` for ABCNN-1/3, ``conv_matrix`` for ABCNN-2/3)."""
        m0, m1 = real_positions(first), real_positions(second)
        x0, x1 = self.embed(first), self.embed(second)  # (B, T0, E), (B, T1, E); 0 at padding
        matrix = conv_matrix = None
        if self.before:
            s = self.config.max_len
            for name, ids in (("first", first), ("second", second)):
                if ids.shape[1] > s:
                    raise AttentionError(
                        f"{name} has shape {shape_str(ids.shape)} but ABCNN-1's W0 and W1 cover max_len={s} words"
                    )
            matrix = match_matrix(x0, x1, m0, m1)  # (B, T0, T1)
            a0 = self.w0(F.pad(matrix, (0, s - matrix.shape[2])))  # (B, T0, s) -> (B, T0, E)
            a1 = self.w1(F.pad(matrix.transpose(1, 2), (0, s - matrix.shape[1])))  # (B, T1, s) -> (B, T1, E)
            x0, x1 = torch.cat([x0, a0], -1), torch.cat([x1, a1], -1)  # (B, T, 2E): two channels
        c0, cm0 = self._convolve(x0, m0)  # (B, T0 + w - 1, K), (B, T0 + w - 1)
        c1, cm1 = self._convolve(x1, m1)
        if self.after:
            conv_matrix = match_matrix(c0, c1, cm0, cm1)  # (B, T0 + w - 1, T1 + w - 1)
            p0, p1 = conv_matrix.sum(2), conv_matrix.sum(1)  # row sums, column sums
        else:
            p0, p1 = cm0 / self.config.width, cm1 / self.config.width  # w-ap: plain averages
        v0, v1 = self._pool(c0, p0, m0), self._pool(c1, p1, m1)  # (B, K) each
        features = torch.cat([v0, v1, v0 * v1, (v0 - v1).abs()], -1)  # (B, 4K)
        return Classified(self.out(self.drop(features)), matrix=matrix, conv_matrix=conv_matrix)
