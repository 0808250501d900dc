"""Mixed precision (issue 12): attention under torch.autocast runs in the autocast dtype and stays
close to float32; every G2P model and classifier trains and decodes under bf16 autocast on the
CPU; the run's precision is stored and restored on --resume; bad precisions are one-line errors."""

import json

import pytest
import torch
from cli_errors import one_line_error

import attnkit
from attnkit import AttentionError
from attnkit.cli import main
from attnkit.tasks.g2p import G2P, G2PTask
from attnkit.train import TrainConfig, Trainer, checkpoint
from attnkit.train.precision import autocast

BF16 = {"rtol": 4e-2, "atol": 4e-2}  # bfloat16 has 8 bits of mantissa: ~0.4% per rounding, a few roundings deep


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("score", ["scaled_dot", "general", "additive", "cosine", "concat"])
def test_attention_module_under_autocast_runs_in_bf16_close_to_float32(score):
    torch.manual_seed(0)
    module = attnkit.Attention(16, 16, score=score)  # float32 parameters, as in mixed-precision training
    q, k = torch.randn(3, 4, 16, requires_grad=True), torch.randn(3, 6, 16)
    mask = attnkit.masks.padding([6, 4, 2])
    expected = module(q, k, mask=mask, need_weights=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module(q, k, mask=mask, need_weights=True)
    assert got.output.dtype == torch.bfloat16 and got.weights.dtype == torch.bfloat16
    torch.testing.assert_close(got.output.float(), expected.output, **BF16)
    torch.testing.assert_close(got.weights.float(), expected.weights, **BF16)
    assert (got.weights[2, :, 2:] == 0).all()  # padding keeps weight exactly 0
    got.output.float().square().sum().backward()
    grads = [q.grad, *(p.grad for p in module.parameters())]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_functional_attention_casts_float32_inputs_under_autocast_and_only_there():
    q = torch.randn(2, 3, 8)
    k = torch.randn(2, 5, 8, dtype=torch.bfloat16)  # a bf16 projection beside a float32 one
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attnkit.attention(q, k, k)
    assert out.dtype == torch.bfloat16
    ref, _ = attnkit.attention(q.bfloat16(), k, k)
    torch.testing.assert_close(out, ref)
    with pytest.raises(AttentionError, match="key has dtype torch.bfloat16 but expected torch.float32"):
        attnkit.attention(q, k, k)  # no autocast: one dtype per call, as before
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.raises(AttentionError, match="key has dtype torch.bfloat16 but expected torch.float64"),
    ):
        attnkit.attention(q.double(), k, k)  # autocast leaves float64 alone, and so does attnkit


def test_cached_multihead_steps_under_autocast_equal_one_causal_call():
    torch.manual_seed(0)
    mha = attnkit.MultiHeadAttention(16, 4, causal=True).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = mha(x).output
        cache = attnkit.KVCache()
        steps = torch.cat([mha(x[:, t : t + 1], cache=cache).output for t in range(5)], dim=1)
    assert steps.dtype == whole.dtype == torch.bfloat16
    torch.testing.assert_close(steps.float(), whole.float(), **BF16)
    torch.testing.assert_close(whole.float(), mha(x).output.detach(), **BF16)


G2P_MODELS = [
    ("rnn", {"hidden_dim": 16, "embed_dim": 8}),
    ("rnn", {"hidden_dim": 16, "embed_dim": 8, "attention": "bahdanau", "cell": "gru"}),
    ("rnn", {"hidden_dim": 16, "embed_dim": 8, "attention": "local-p"}),
    ("rnn", {"hidden_dim": 16, "embed_dim": 8, "attention": "hard"}),
    ("rnn", {"hidden_dim": 16, "embed_dim": 8, "attention": "none"}),
    ("transformer", {"d_model": 16, "heads": 2, "ff_dim": 32, "encoder_layers": 1, "decoder_layers": 1}),
]


@pytest.mark.parametrize("model, config", G2P_MODELS, ids=[f"{m}-{c.get('attention', '')}" for m, c in G2P_MODELS])
def test_every_g2p_model_trains_and_decodes_under_bf16(tmp_path, model, config):
    task = G2PTask(model, config, limit=40, valid_limit=6)
    trainer = Trainer(task, TrainConfig(epochs=1, batch_size=16, precision="bf16"), tmp_path, progress=False)
    trainer.fit()
    assert all(torch.isfinite(torch.tensor(trainer.losses)))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights stay float32
    g2p = G2P.load(tmp_path)
    words = ["cat", "attention", "x-ray"]
    for beam in (1, 3):
        fp32 = g2p.pronounce(words, beam=beam)
        bf16 = g2p.pronounce(words, beam=beam, precision="bf16")
        assert [len(p.phones) > 0 for p in bf16] == [True] * 3 and len(fp32) == 3


@pytest.fixture
def no_native_bf16(monkeypatch):
    """This machine as an AVX2-only CPU sees it: no oneDNN bfloat16 LSTM (the fallback's path)."""
    from attnkit.models import rnn

    monkeypatch.setenv("ATTNKIT_CPU_BF16", "0")
    for cached in (rnn.cpu_bf16_lstm, rnn._say_lstm_fallback):
        cached.cache_clear()
    yield
    for cached in (rnn.cpu_bf16_lstm, rnn._say_lstm_fallback):
        cached.cache_clear()


def test_the_bf16_lstm_probe_tells_whether_torch_runs_one():
    from attnkit.models.rnn import cpu_bf16_lstm

    lstm, x = torch.nn.LSTM(4, 4, batch_first=True), torch.randn(2, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        if cpu_bf16_lstm():
            assert lstm(x)[0].dtype == torch.bfloat16
        else:  # an AVX2-only CPU (or ONEDNN_MAX_CPU_ISA=AVX2): oneDNN has no bf16 LSTM kernel
            with pytest.raises(RuntimeError, match="primitive descriptor"):
                lstm(x)


@pytest.mark.parametrize("packed", [False, True])
def test_without_native_bf16_an_lstm_runs_in_float32_and_says_so_once(no_native_bf16, packed):
    from attnkit.models.rnn import PrecisionFallbackWarning, over_sequence

    torch.manual_seed(0)
    lstm, x = torch.nn.LSTM(4, 6, batch_first=True, bidirectional=True), torch.randn(2, 3, 4)
    h0 = (torch.randn(2, 2, 6), torch.randn(2, 2, 6))
    if packed:
        x, h0 = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([3, 2]), batch_first=True), None
    expected = lstm(x, h0)[0]
    with pytest.warns(PrecisionFallbackWarning, match="LSTM runs in float32") as said:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = [over_sequence(lstm, x, h0)[0] for _ in range(2)]
    assert len(said) == 1  # once per process, not once per call
    for out in outs:
        out, want = (out.data, expected.data) if packed else (out, expected)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, want, rtol=0, atol=0)


@pytest.mark.parametrize("attention", ["none", "luong-general"])
def test_without_native_bf16_lstm_g2p_models_train_and_decode_under_bf16(tmp_path, no_native_bf16, attention):
    config = {"hidden_dim": 16, "embed_dim": 8, "attention": attention}
    config |= {"input_feed": False} if attention != "none" else {}  # both run the LSTM over the whole target
    task = G2PTask("rnn", config, limit=40, valid_limit=6)
    trainer = Trainer(task, TrainConfig(epochs=1, batch_size=16, precision="bf16"), tmp_path, progress=False)
    trainer.fit()
    assert all(torch.isfinite(torch.tensor(trainer.losses)))
    g2p = G2P.load(tmp_path)
    for beam in (1, 3):
        fp32 = g2p.pronounce(["cat", "attention"], beam=beam)
        bf16 = g2p.pronounce(["cat", "attention"], beam=beam, precision="bf16")
        assert [len(p.phones) > 0 for p in bf16] == [True, True] and len(fp32) == 2


def test_without_native_bf16_the_command_line_pronounces_in_bf16_with_one_note(no_native_bf16, capsys):
    assert main(["pronounce", "--model", "accurate", "--precision", "bf16", "cat", "dog"]) == 0  # its LSTMs
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["cat", "dog"]
    assert len(err.strip().splitlines()) == 1 and "LSTM runs in float32" in err


def test_every_classifier_takes_a_step_under_bf16():
    from test_classify_models import TINY

    from attnkit.tasks.classify import ClassifyTask

    for task, model in [("gloss", "rnn"), ("gloss", "cnn"), ("gloss", "transformer"), ("document", "han")]:
        t = ClassifyTask(task, model, TINY[model], limit=16, valid_limit=4, min_count=1)
        net = t.build()
        batch = t.batches(0, torch.Generator().manual_seed(0), 8)[0]
        with autocast("bf16"):
            loss, _ = t.loss(net, batch, TrainConfig())
        loss.backward()
        assert torch.isfinite(loss), (task, model)
    for model in ("bcnn", "abcnn1", "abcnn2", "abcnn3"):
        t = ClassifyTask("pair", model, TINY[model], limit=16, valid_limit=4, min_count=1)
        net = t.build()
        batch = t.batches(0, torch.Generator().manual_seed(0), 8)[0]
        with autocast("bf16"):
            loss, _ = t.loss(net, batch, TrainConfig())
        loss.backward()
        assert torch.isfinite(loss), model


def _tiny(out, **train):
    task = G2PTask("rnn", {"hidden_dim": 16, "embed_dim": 8, "dropout": 0.3}, limit=100, valid_limit=4)
    config = TrainConfig(epochs=3, batch_size=16, checkpoint_every=5, seed=5, precision="bf16", **train)
    return Trainer(task, config, out, progress=False)


def test_bf16_run_records_its_precision_and_resumes_exactly(tmp_path):
    first = _tiny(tmp_path / "run")
    first.fit(max_steps=10)  # a checkpoint at step 10
    meta = checkpoint.read_meta(tmp_path / "run" / "last.safetensors")
    assert meta["train"]["precision"] == "bf16" and meta["progress"]["step"] == 10
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["precision"] == "bf16"
    resumed = _tiny(tmp_path / "run")
    resumed.fit(resume=True, max_steps=4)
    fresh = _tiny(tmp_path / "fresh")
    fresh.fit(max_steps=14)
    assert resumed.losses == fresh.losses[10:]  # bit for bit, under autocast too
    with pytest.raises(AttentionError, match="written for another configuration"):
        Trainer(resumed.task, TrainConfig(**{**meta["train"], "precision": "fp32"}), tmp_path / "run").fit(resume=True)


def test_old_checkpoints_without_the_new_fields_still_resume(tmp_path):
    _tiny(tmp_path / "run").fit(max_steps=5)
    path = tmp_path / "run" / "last.safetensors"
    tensors, meta = checkpoint.load(path)
    for key in ("precision", "batch_tokens"):
        meta["train"].pop(key)
    meta["train"]["precision"] = "bf16"  # keep this run's precision; drop the field that did not exist
    meta["progress"].pop("world_size")
    checkpoint.save(path, tensors, {k: v for k, v in meta.items() if k != "format"})
    resumed = _tiny(tmp_path / "run")
    resumed.fit(resume=True, max_steps=1)
    assert resumed.state["step"] == 6 and resumed.state["world_size"] == 1


def test_precision_is_checked():
    with pytest.raises(AttentionError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(AttentionError, match="precision fp16 needs a CUDA device"):
        Trainer(G2PTask("rnn", {"hidden_dim": 8}, limit=5, valid_limit=1), TrainConfig(precision="fp16"), "x")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "g2p", "--precision", "fp8"], "precision must be one of fp32, bf16, fp16, got 'fp8'"),
        (["train", "g2p", "--precision", "fp16", "--limit", "5"], "precision fp16 needs a CUDA device"),
        (["train", "classify", "--precision", "half"], "precision must be one of"),
        (["pronounce", "cat", "--precision", "fp16"], "precision fp16 needs a CUDA device"),
        (["pronounce", "cat", "--precision", "bf8"], "precision must be one of"),
        (["eval", "--precision", "fp8", "--limit", "3"], "precision must be one of"),
        (["train", "g2p", "--device", "tpu"], "--device must be cpu or cuda"),
    ],
)
def test_bad_precision_or_device_is_one_line(capsys, tmp_path, argv, expected):
    if argv[:2] == ["train", "g2p"] or argv[:2] == ["train", "classify"]:
        argv = [*argv, "--out", str(tmp_path / "run")]
    one_line_error(capsys, argv, expected)


def test_pronounce_and_eval_in_bf16(capsys):
    words = ["cat", "dog", "attention", "knight", "colonel"]
    assert main(["pronounce", *words]) == 0
    fp32 = capsys.readouterr().out
    assert main(["pronounce", *words, "--precision", "bf16"]) == 0
    bf16 = capsys.readouterr().out
    assert bf16.splitlines()[0].split() == ["cat", "K", "AE1", "T"]
    assert sum(a == b for a, b in zip(fp32.splitlines(), bf16.splitlines())) >= 4  # rounding may flip a close call
    assert main(["eval", "--limit", "20", "--beam", "1", "--precision", "bf16"]) == 0
    assert "bf16" in capsys.readouterr().out


def test_damaged_metadata_of_the_new_fields_names_the_field():
    from attnkit.train.schema import from_dict
    from attnkit.train.trainer import Progress

    with pytest.raises(AttentionError, match="train.precision must be a string, got an int 16"):
        from_dict(TrainConfig, {"precision": 16}, "train")
    with pytest.raises(AttentionError, match="train.batch_tokens must be an int or null, got a string '4096'"):
        from_dict(TrainConfig, {"batch_tokens": "4096"}, "train")
    with pytest.raises(AttentionError, match="batch_tokens must be > 0, got 0"):
        from_dict(TrainConfig, {"batch_tokens": 0}, "train")
    with pytest.raises(AttentionError, match="progress.world_size must be an int, got a number 2.5"):
        from_dict(Progress, {"world_size": 2.5}, "progress")
    with pytest.raises(AttentionError, match="progress.world_size must be >= 1, got 0"):
        from_dict(Progress, {"world_size": 0}, "progress")
