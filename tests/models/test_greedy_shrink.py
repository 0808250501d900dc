"""Greedy decoding and beam search drop the sources that have stopped from their batch: every
source's output stays the one it decodes alone (float64), and the batch does shrink, except for a
state tied to its memory."""

from __future__ import annotations

import pytest
import torch

from attnkit.models import Ensemble, RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq, beam_search, greedy


class Recording(torch.nn.Module):
    """``model`` with the batch size of each of its steps written down."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def encode(self, src):
        return self.model.encode(src)

    def start(self, memory):
        return self.model.start(memory)

    def step(self, memory, state, token, t, need_weights=True):
        self.sizes.append(token.shape[0])
        return self.model.step(memory, state, token, t, need_weights)


def _src(rows: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (rows,), generator=g)
    src = torch.randint(3, 12, (rows, int(lengths.max())), generator=g)
    return src.masked_fill(torch.arange(src.shape[1]) >= lengths[:, None], 0)


def _rnn(seed: int) -> RNNSeq2Seq:
    torch.manual_seed(seed)
    cfg = RNNConfig(src_vocab=12, tgt_vocab=9, embed_dim=6, hidden_dim=8, cell="gru", scaled=True, input_feed=False)
    return RNNSeq2Seq(cfg).double().eval()


@pytest.mark.parametrize("kind", ["rnn", "ensemble", "transformer"])
def test_each_row_decodes_as_alone(kind):
    if kind == "rnn":
        model = _rnn(0)
    elif kind == "ensemble":
        model = Ensemble([_rnn(1), _rnn(2)])
    else:
        torch.manual_seed(3)
        cfg = TransformerConfig(
            src_vocab=12, tgt_vocab=9, d_model=8, heads=2, ff_dim=16, encoder_layers=1, decoder_layers=1, max_len=40
        )
        model = TransformerSeq2Seq(cfg).double().eval()
    src = _src()
    recorded = Recording(model)
    batch = greedy(recorded, src)
    for i, h in enumerate(batch):
        alone = greedy(model, src[i : i + 1, : int(src[i].ne(0).sum())])[0]
        assert h.tokens == alone.tokens and h.finished == alone.finished
        assert h.score == pytest.approx(alone.score, abs=1e-10)
        torch.testing.assert_close(h.weights, alone.weights, rtol=0, atol=1e-12)
    shrank = recorded.sizes[-1] < src.shape[0]
    assert shrank == (kind != "transformer"), recorded.sizes  # the cross-attention cache keeps its batch


def test_rows_at_their_length_limit_leave_with_the_finished():
    model = Recording(_rnn(4))
    src = _src(rows=8, seed=5)
    out = greedy(model, src, max_len=3)
    assert all(len(h.tokens) <= 3 for h in out)
    assert len(model.sizes) <= 3


@pytest.mark.parametrize("nbest", [None, 3])
@pytest.mark.parametrize("kind", ["rnn", "ensemble"])
def test_beam_search_sources_decode_as_alone_while_the_batch_shrinks(kind, nbest):
    model = _rnn(8) if kind == "rnn" else Ensemble([_rnn(9), _rnn(10)])
    src = _src(rows=10, seed=11)
    recorded = Recording(model)
    batch = beam_search(recorded, src, beam=4, nbest=nbest)
    for i, out in enumerate(batch):
        alone = beam_search(model, src[i : i + 1, : int(src[i].ne(0).sum())], beam=4, nbest=nbest)[0]
        for h, a in zip(*([out, alone] if nbest else [[out], [alone]])):
            assert h.tokens == a.tokens and h.finished == a.finished
            assert h.score == pytest.approx(a.score, abs=1e-10)
            torch.testing.assert_close(h.weights, a.weights, rtol=0, atol=1e-12)
        if nbest:
            assert len(out) == len(alone)
    assert recorded.sizes[-1] < 4 * src.shape[0], recorded.sizes
