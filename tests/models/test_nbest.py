"""Beam search's n-best lists (issue 25): each output's score is its true log-probability, the
lists are distinct and sorted, and over a vocabulary small enough to enumerate every output, a
beam that holds them all returns the true k most probable."""

import itertools
import math

import pytest
import torch
from torch import Tensor

from attnkit import AttentionError
from attnkit.data.vocab import BOS, EOS
from attnkit.models import Ensemble, RNNConfig, RNNSeq2Seq, beam_search

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = torch.tensor([[3, 4, 5, 6, 0], [7, 8, 0, 0, 0], [5, 5, 4, 3, 9]])


def _rnn(seed: int, tgt_vocab: int = 13) -> RNNSeq2Seq:
    torch.manual_seed(seed)
    config = RNNConfig(src_vocab=11, tgt_vocab=tgt_vocab, hidden_dim=16, embed_dim=8, dropout=0.0)
    return RNNSeq2Seq(config).double().eval()


def _ensemble(seed: int, tgt_vocab: int = 13) -> Ensemble:
    return Ensemble([_rnn(seed, tgt_vocab), _rnn(seed + 1, tgt_vocab)]).eval()


def _log_prob(model, src: Tensor, tokens: list[int], finished: bool) -> float:
    """The model's log-probability of ``tokens`` (then EOS if ``finished``) by teacher forcing, in float64."""
    src = src[None, : int(src.ne(0).sum())]
    gold = torch.tensor([*tokens, *([EOS] if finished else [])])
    tgt_in = torch.tensor([[BOS, *gold.tolist()[: len(gold) - 1]]]) if len(gold) else torch.tensor([[BOS]])
    logp = model.decode(model.encode(src), tgt_in).logits.log_softmax(-1)[0]  # (T, V)
    return logp[torch.arange(len(gold)), gold].sum().item()


@pytest.mark.parametrize("build", [_rnn, _ensemble])
def test_nbest_lists_are_distinct_sorted_true_probabilities(build):
    model = build(0, tgt_vocab=6)  # few symbols: outputs end within 8 steps
    lists = beam_search(model, SRC, beam=6, nbest=4, max_len=8)
    assert len(lists) == len(SRC) and all(h.finished for hyps in lists for h in hyps)
    for src, hyps in zip(SRC, lists):
        assert 1 <= len(hyps) <= 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
        assert math.fsum(math.exp(s) for s in scores) <= 1 + 1e-6
        for h in hyps:
            assert h.score == pytest.approx(_log_prob(model, src, h.tokens, h.finished), abs=1e-9)
            assert h.weights.shape == (len(h.tokens) + 1, int(src.ne(0).sum()))


@pytest.mark.parametrize("build", [_rnn, _ensemble])
@pytest.mark.parametrize("tgt_vocab", [6, 13])  # outputs that end; outputs cut at 8 steps
def test_the_first_of_nbest_is_the_best_without_length_penalty(build, tgt_vocab):
    model = build(1, tgt_vocab)
    best = beam_search(model, SRC, beam=5, alpha=0.0, max_len=8)
    for n in (1, 3, 5):
        firsts = [hyps[0] for hyps in beam_search(model, SRC, beam=5, nbest=n, max_len=8)]
        assert [h.tokens for h in firsts] == [h.tokens for h in best]
        assert [h.score for h in firsts] == [h.score for h in best]
        for a, b in zip(firsts, best):
            torch.testing.assert_close(a.weights, b.weights)


@pytest.mark.parametrize("build", [_rnn, _ensemble])
def test_a_beam_that_holds_every_output_returns_the_true_top_k(build):
    """Five target symbols (three specials) and at most 3 steps: 1 + 4 + 16 = 21 outputs end within
    the limit, 85 prefixes are alive at the last step, so a beam of 125 searches them all."""
    vocab, steps = 5, 3
    model = build(2, vocab)
    src = SRC[:2]
    everything = beam_search(model, src, beam=vocab**steps, nbest=vocab**steps, max_len=steps, alpha=0.0)
    top = beam_search(model, src, beam=vocab**steps, nbest=7, max_len=steps, alpha=0.0)
    symbols = [t for t in range(vocab) if t != EOS]  # any symbol but EOS may come before the end
    for row, all_hyps, top_hyps in zip(src, everything, top):
        truth = {
            seq: _log_prob(model, row, list(seq), True)
            for n in range(steps)
            for seq in itertools.product(symbols, repeat=n)
        }
        assert {tuple(h.tokens): h.score for h in all_hyps} == pytest.approx(truth, abs=1e-9)
        assert len(all_hyps) == len(truth) == 21
        ranked = sorted(truth.items(), key=lambda kv: -kv[1])[:7]
        assert [tuple(h.tokens) for h in top_hyps] == [seq for seq, _ in ranked]
        assert [h.score for h in top_hyps] == pytest.approx([s for _, s in ranked], abs=1e-9)
        assert math.fsum(math.exp(s) for s in truth.values()) <= 1 + 1e-6


def test_cut_outputs_only_when_none_finished_and_impossible_ones_dropped():
    """One step with EOS ruled out: no output ends, so the n-best are cut ones; five target symbols
    less EOS make 4 possible one-step outputs, so a beam of 6 holds 2 prefixes of score -inf."""
    model = _rnn(3, tgt_vocab=5)
    for hyps in beam_search(model, SRC, beam=6, nbest=6, max_len=1, min_len=1):
        assert len(hyps) == 4 and not any(h.finished for h in hyps)
        assert sorted(h.tokens[0] for h in hyps) == [0, 1, 3, 4]
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)
        assert all(h.weights.shape[0] == 1 for h in hyps)  # no end row


def test_without_nbest_the_output_is_one_hypothesis_per_source():
    model = _rnn(4)
    hyps = beam_search(model, SRC, beam=3, max_len=8)
    assert all(not isinstance(h, list) for h in hyps) and len(hyps) == len(SRC)


@pytest.mark.parametrize("nbest", [0, 4, -1, True, 2.0, "2"])
def test_bad_nbest_is_refused(nbest):
    with pytest.raises(AttentionError, match=rf"nbest must be an int from 1 to beam=3 .*, got {nbest!r}$"):
        beam_search(_rnn(0), SRC, beam=3, nbest=nbest)
