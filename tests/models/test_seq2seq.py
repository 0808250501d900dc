"""Encoder-decoders and their decoding: every attention kind, greedy vs beam, alignments."""

import pytest
import torch

from attnkit import AttentionError
from attnkit.data.vocab import BOS, EOS
from attnkit.models import ATTENTIONS, RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq, beam_search, greedy
from attnkit.models.decoding import length_penalty

LUONG = [a for a in ATTENTIONS if a not in ("none", "bahdanau")]
KINDS = (
    [("rnn", a) for a in ATTENTIONS]
    + [("rnn-nofeed", a) for a in LUONG]  # teacher forcing in one RNN call
    + [("rnn-gru", "luong-general"), ("rnn-gru-nofeed", "luong-general"), ("rnn-scaled", "luong-general")]
    + [("transformer", None)]
)


def make(kind, attention, seed=0):
    torch.manual_seed(seed)
    if kind == "transformer":
        model = TransformerSeq2Seq(
            TransformerConfig(12, 14, d_model=16, heads=2, ff_dim=32, encoder_layers=2, decoder_layers=2)
        )
    else:
        cell = "gru" if "gru" in kind else "lstm"
        flags = {"input_feed": "nofeed" not in kind, "scaled": "scaled" in kind}
        config = RNNConfig(12, 14, attention=attention, cell=cell, embed_dim=8, hidden_dim=8, layers=2, window=1, **flags)
        model = RNNSeq2Seq(config)
    return model.double().eval()


SRC = torch.tensor([[4, 5, 6, 7, 8], [9, 10, 11, 0, 0], [3, 0, 0, 0, 0]])


@pytest.mark.parametrize("kind, attention", KINDS)
def test_beam_of_one_is_greedy(kind, attention):
    model = make(kind, attention)
    g, b = greedy(model, SRC, max_len=8), beam_search(model, SRC, beam=1, max_len=8)
    assert [h.tokens for h in g] == [h.tokens for h in b]
    assert [h.score for h in g] == pytest.approx([h.score for h in b], abs=1e-12)
    for hg, hb in zip(g, b):
        assert (hg.weights is None) == (hb.weights is None)
        if hg.weights is not None:
            torch.testing.assert_close(hg.weights, hb.weights)


@pytest.mark.parametrize("kind, attention", KINDS)
def test_decoded_steps_match_teacher_forcing(kind, attention):
    """The step-by-step decoder and the whole-sequence decoder are one model: the greedy output,
    fed back as a teacher-forced target, gets the same weights and the same summed log-probability."""
    model = make(kind, attention)
    for beam in (1, 3):
        hyps = greedy(model, SRC, max_len=8) if beam == 1 else beam_search(model, SRC, beam=3, alpha=0.0, max_len=8)
        for i, h in enumerate(hyps):
            src = SRC[i : i + 1, : int(SRC[i].ne(0).sum())]
            ended = len(h.tokens) < 8
            tgt = torch.tensor([[BOS, *h.tokens] + ([EOS] if ended else [])])
            out = model.decode(model.encode(src), tgt[:, :-1] if ended else tgt)
            logp = out.logits.log_softmax(-1)[0]
            gold = tgt[0, 1:] if ended else torch.tensor([*h.tokens])
            assert logp[torch.arange(len(gold)), gold].sum().item() == pytest.approx(h.score, abs=1e-9)
            if h.weights is not None:
                torch.testing.assert_close(out.weights[0, : h.weights.shape[0]], h.weights)


@pytest.mark.parametrize("kind, attention", [k for k in KINDS if k[1] != "none"])
def test_alignment_rows_are_distributions_over_real_letters(kind, attention):
    model = make(kind, attention)
    src = SRC[1:2]  # three letters, then padding
    out = model.decode(model.encode(src), torch.tensor([[BOS, 4, 5, 6]]))
    w = out.weights[0]  # (T, S)
    assert w[:, 3:].abs().max() == 0  # padding gets nothing
    total = w.sum(-1)
    if attention == "local-p":  # Gaussian-weighted, not renormalized: at most 1
        assert (total <= 1 + 1e-12).all() and (total > 0).all()
    else:
        torch.testing.assert_close(total, torch.ones_like(total))


def test_local_m_attends_a_window_around_the_step():
    model = make("rnn", "local-m")  # window D = 1
    out = model.decode(model.encode(SRC[:1]), torch.tensor([[BOS, 4, 5, 6, 7]]))
    w = out.weights[0]  # (T=5, S=5)
    allowed = (torch.arange(5)[:, None] - torch.arange(5)[None, :]).abs() <= 1
    assert w[~allowed].abs().max() == 0 and (w[allowed] > 0).all()


def test_hard_attention_samples_in_training_and_takes_the_argmax_at_inference():
    model = make("rnn", "hard")
    tgt = torch.tensor([[BOS, 4, 5], [BOS, 6, 7], [BOS, 8, 9]])
    model.train()
    out = model.decode(model.encode(SRC), tgt)
    assert out.log_prob is not None and out.log_prob.shape == (3, 3)
    assert set(out.weights.unique().tolist()) <= {0.0, 1.0}  # one sampled letter per step
    model.eval()
    out = model.decode(model.encode(SRC), tgt)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3, 3, dtype=torch.double))
    assert set(out.weights.unique().tolist()) <= {0.0, 1.0}


def test_length_penalty_is_gnmt():
    assert length_penalty(torch.tensor([1, 7]), 1.0).tolist() == pytest.approx([1.0, 2.0])
    assert length_penalty(torch.tensor(3), 0.0).item() == 1.0


def test_beam_must_be_a_positive_int():
    with pytest.raises(AttentionError, match="beam must be an int >= 1, got 0"):
        beam_search(make("rnn", "none"), SRC, beam=0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: RNNConfig(5, 5, attention="luong"), "attention='luong' is unknown; expected one of"),
        (lambda: RNNConfig(5, 5, cell="rnn"), "cell='rnn' is unknown"),
        (lambda: RNNConfig(5, 5, dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
        (lambda: RNNConfig(5, 5, hidden_dim=-3), r"hidden_dim must be an int in 1\.\.2\*\*62, got -3"),
        (
            lambda: RNNConfig(5, 5, attention="bahdanau", scaled=True),
            "scaled=True divides a dot or general score by √M, but attention='bahdanau' has score 'additive'",
        ),
        (
            lambda: RNNConfig(5, 5, attention="none", input_feed=False),
            "input_feed=False turns off Luong's input feeding; attention='none' has none to turn off",
        ),
        (lambda: TransformerConfig(5, 5, heads=2.0), r"heads must be an int in 1\.\.2\*\*62, got 2.0 \(float\)"),
        (lambda: TransformerConfig(5, 5, d_model=10, heads=4), "heads=4 must divide d_model=10"),
    ],
)
def test_bad_configs_are_rejected_when_built(build, message):
    with pytest.raises(AttentionError, match=message):
        build()


def test_transformer_rejects_a_source_longer_than_its_positions():
    model = TransformerSeq2Seq(TransformerConfig(12, 14, d_model=8, heads=2, ff_dim=8, max_len=4))
    with pytest.raises(AttentionError, match=r"src has shape \(1, 5\) but the model's positions end at max_len=4"):
        model.encode(torch.ones(1, 5, dtype=torch.long))


@pytest.mark.parametrize("beam", [1, 3])
def test_min_len_rules_out_an_earlier_end(beam):
    """min_len == max_len decodes exactly that many steps (how the training benchmark times decoding);
    a smaller min_len still lets an output end after it."""
    model = make("rnn", "luong-general")
    with torch.no_grad():
        model.out.bias[EOS] += 5.0  # EOS first, unless min_len rules it out
    decode = (lambda **kw: greedy(model, SRC, **kw)) if beam == 1 else (lambda **kw: beam_search(model, SRC, beam=3, **kw))
    for h in decode(max_len=6, min_len=6):
        assert len(h.tokens) == 6 and EOS not in h.tokens
        assert h.weights.shape[0] == 6  # one row per step
    assert max(len(h.tokens) for h in decode(max_len=12)) < 3
    assert all(len(h.tokens) >= 3 for h in decode(max_len=12, min_len=3))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"min_len": -1}, "min_len must be an int >= 0, got -1"), ({"min_len": 9, "max_len": 8}, "min_len=9 is above max_len=8")],
)
def test_bad_min_len_is_rejected(kwargs, message):
    with pytest.raises(AttentionError, match=message):
        greedy(make("rnn", "none"), SRC, **kwargs)
