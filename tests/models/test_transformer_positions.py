"""``TransformerConfig.position``: every method trains, survives a checkpoint, decodes step by step
as in parallel; the absolute methods keep their table and its limit, the relative ones read any length."""

import warnings

import pytest
import torch
from cli_errors import one_line_error

from attnkit.data import cmudict
from attnkit.errors import AttentionError
from attnkit.models import Ensemble, TransformerConfig, TransformerSeq2Seq, greedy
from attnkit.models.transformer import ABSOLUTE, POSITIONS, sinusoids
from attnkit.tasks.g2p import G2P, build_model, positions
from attnkit.train import checkpoint

TINY = {"d_model": 16, "heads": 2, "ff_dim": 32, "encoder_layers": 2, "decoder_layers": 2, "max_len": 12}
RELATIVE = [p for p in POSITIONS if p not in ABSOLUTE]
SRC = torch.tensor([[4, 5, 6, 7, 8, 9], [9, 10, 11, 0, 0, 0], [3, 0, 0, 0, 0, 0]])  # (B, S), 0 = padding
ALPHABET = "abcdefghijklmnopqrstuvwxyz"  # a word longer than the checkpoints' max_len
TGT = torch.tensor([[1, 4, 5, 6, 7], [1, 8, 9, 0, 0], [1, 3, 3, 3, 3]])  # (B, T), BOS first


def make(position: str, seed: int = 0, **fields) -> TransformerSeq2Seq:
    torch.manual_seed(seed)
    return TransformerSeq2Seq(TransformerConfig(12, 14, **{**TINY, **fields}, position=position))


@pytest.mark.parametrize("position", POSITIONS)
def test_each_method_trains_a_step_and_round_trips_a_checkpoint(position, tmp_path):
    model = make(position)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(SRC, TGT[:, :-1]).logits.flatten(0, 1), TGT[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    if position == "learned":
        assert "position_embed.weight" in changed  # the table is trained
    if position == "t5":
        assert any("relative_bias" in k for k in changed)  # so are the bias buckets
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, {f"model.{k}": v for k, v in model.state_dict().items()}, {})
    loaded = build_model("transformer", {**TINY, "position": position}, 12, 14)
    checkpoint.load_model(loaded, checkpoint.load(path)[0], path)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(SRC, TGT).logits, model(SRC, TGT).logits, rtol=0, atol=0)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_step_decoding_equals_parallel_decoding(position, use_cache):
    """float64: the decoder run one position at a time (with a key/value cache, or over the whole
    prefix again) gives the logits and cross-attention of the teacher-forced parallel decoder."""
    model = make(position).double().eval()
    model.use_cache = use_cache
    memory = model.encode(SRC)
    whole = model.decode(memory, TGT)
    state = model.start(memory)
    for t in range(TGT.shape[1]):
        logits, state, weights, _ = model.step(memory, state, TGT[:, t], t)
        torch.testing.assert_close(logits, whole.logits[:, t], rtol=0, atol=1e-12)
        torch.testing.assert_close(weights, whole.weights[:, t], rtol=0, atol=1e-12)


@pytest.mark.parametrize("position", POSITIONS)
def test_a_padded_source_reads_as_its_unpadded_self(position):
    """Right padding moves no real position: each row alone gives the batch's logits (float64)."""
    model = make(position).double().eval()
    batch = model(SRC, TGT).logits
    for i in range(SRC.shape[0]):
        real = int(SRC[i].ne(0).sum())
        alone = model(SRC[i : i + 1, :real], TGT[i : i + 1]).logits
        torch.testing.assert_close(alone[0], batch[i], rtol=0, atol=1e-12)


def test_sinusoidal_is_the_default_and_unchanged():
    """The default config is sinusoidal; the same seed gives the same parameters (no new ones) and
    embeddings scaled by √D plus the sinusoid table, from ``start`` on for a decoder step."""
    config = TransformerConfig(12, 14, **TINY)
    assert config.position == "sinusoidal"
    torch.manual_seed(0)
    default = TransformerSeq2Seq(config).eval()
    explicit = make("sinusoidal")
    assert default.state_dict().keys() == explicit.state_dict().keys()
    assert not any("position" in k for k in default.state_dict())  # the table is a buffer, rebuilt, not saved
    for a, b in zip(default.state_dict().values(), explicit.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    expected = default.tgt_embed(TGT) * 4.0 + sinusoids(12, 16)[2:7]  # √D = 4, positions 2..6
    torch.testing.assert_close(default._embed(default.tgt_embed, TGT, "tgt", start=2), expected, rtol=0, atol=0)


def test_learned_positions_are_a_table_added_like_the_sinusoids():
    model = make("learned").eval()
    table = model.position_embed.weight  # (max_len, D)
    assert table.shape == (12, 16) and table.requires_grad
    expected = model.tgt_embed(TGT) * 4.0 + table[3:8]
    torch.testing.assert_close(model._embed(model.tgt_embed, TGT, "tgt", start=3), expected, rtol=0, atol=0)


@pytest.mark.parametrize("position", RELATIVE)
def test_relative_methods_act_in_self_attention_only_and_add_nothing_to_embeddings(position):
    model = make(position).eval()
    selfs = [layer.attn for layer in model.encoder] + [layer.self_attn for layer in model.decoder]
    assert all(a.position == position for a in selfs)
    assert all(layer.cross_attn.position is None for layer in model.decoder)
    torch.testing.assert_close(model._embed(model.src_embed, SRC, "src"), model.src_embed(SRC) * 4.0, rtol=0, atol=0)


@pytest.mark.parametrize("position", POSITIONS)
def test_every_method_tells_a_spelling_from_its_reverse(position):
    """Cross-attention reads no positions under the relative methods, so the encoder must tell the
    order: the encoder's ALiBi is directional (the symmetric form gives "stop" and "pots" one output)."""
    model = make(position).double().eval()
    src = SRC[:1]  # (1, 6), no padding
    logits = [model(s, TGT[:1]).logits for s in (src, src.flip(1))]
    assert (logits[0] - logits[1]).abs().max() > 1e-4


@pytest.mark.parametrize("position", RELATIVE)
def test_relative_methods_have_no_length_limit(position):
    """max_len does not bound a source or an output; ``positions`` gives no cap (an ensemble takes
    its absolute members' smallest table)."""
    model = make(position, max_len=4).eval()
    assert model.max_positions is None and positions(model) is None
    long = torch.arange(3, 12).repeat(2)[None]  # (1, 18): longer than max_len
    hyp = greedy(model, long, max_len=20, min_len=20)[0]  # 20 steps, past max_len
    assert len(hyp.tokens) == 20
    absolute = make("sinusoidal", max_len=20).eval()
    assert positions(absolute) == 20 and positions(Ensemble([model, absolute])) == 20
    with pytest.raises(AttentionError, match=r"src has shape \(1, 18\) but the model's positions end at max_len=4"):
        make("learned", max_len=4).encode(long)


def test_size_bounds_the_parameters_of_every_method():
    for position in POSITIONS:
        config = TransformerConfig(12, 14, **TINY, position=position)
        model = TransformerSeq2Seq(config)
        held = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
        assert held <= config.size() <= 2 * held, position


def test_a_bad_position_is_rejected_when_built_and_on_the_command_line(capsys):
    with pytest.raises(AttentionError, match=r"position='nope' is unknown; expected one of \['sinusoidal', 'learned'"):
        TransformerConfig(12, 14, position="nope")
    one_line_error(
        capsys, ["train", "g2p", "--model", "transformer", "--position", "nope"], "position='nope' is unknown"
    )
    one_line_error(capsys, ["train", "g2p", "--position", "alibi"], "--position does not apply to --model rnn")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two G2P checkpoints of max_len 24 as ``attnkit train g2p`` writes them: one from before
    ``position`` existed (its model_config has no such key), one with ALiBi."""
    letters, phonemes = cmudict.letters(), cmudict.phonemes()
    out = {}
    for name, fields in (("old", {}), ("alibi", {"position": "alibi"})):
        config = {**TINY, "max_len": 24, **fields}
        torch.manual_seed(0)
        model = build_model("transformer", config, len(letters), len(phonemes))
        task = {"name": "g2p", "model": "transformer", "model_config": config, "limit": None, "valid_limit": None}
        task |= {"letters": list(letters.symbols), "phonemes": list(phonemes.symbols), "longest": 7}
        path = tmp_path_factory.mktemp(name) / "best.safetensors"
        checkpoint.save(path, {f"model.{k}": v for k, v in model.state_dict().items()}, {"task": task})
        out[name] = path
    return out


def test_a_checkpoint_without_position_loads_as_sinusoidal(runs):
    meta = checkpoint.read_meta(runs["old"])
    assert "position" not in meta["task"]["model_config"]
    g2p = G2P.load(runs["old"])
    assert g2p.model.config.position == "sinusoidal"
    with pytest.raises(AttentionError, match="has 26 letters; this model reads at most 24"):
        g2p.check_word(ALPHABET)


def test_an_alibi_checkpoint_pronounces_words_longer_than_its_max_len(runs):
    g2p = G2P.load(runs["alibi"])
    assert g2p.model.config.position == "alibi" and g2p.cap == 2 * g2p.longest + 10  # no table to cap it
    assert g2p.check_word(ALPHABET) == ALPHABET
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an untrained model's output may be cut at its length limit
        result = g2p.pronounce([ALPHABET])[0]
    assert result.weights.shape[1] == 26  # its attention read all 26 letters
