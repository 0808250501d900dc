"""Checkpoint integrity (issue 23): the checksum covers the tensors and every metadata entry, a file
without one (or with the old tensor-only one) is refused unless the caller trusts it, quantization
scales are checked, and no metadata, however damaged or huge, is anything but one AttentionError
before memory is allocated: hypothesis draws the damage.

A checksum is not a signature: anyone can write a file whose checksum matches. So the tests that
exercise the metadata checks write files with a valid checksum (:func:`sign`), as a hand-edited and
re-saved file would be."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from cli_errors import one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnkit import AttentionError
from attnkit.cli import main
from attnkit.data.vocab import SPECIALS
from attnkit.models import CLASSIFIERS, RNNConfig, TransformerConfig
from attnkit.tasks.classify import Classifier
from attnkit.tasks.g2p import G2P, MODELS, build_model
from attnkit.train import checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# derandomized as in test_properties.py: the same examples every run
SETTINGS = dict(deadline=None, database=None, derandomize=True)
TINY = {"hidden_dim": 8, "embed_dim": 4, "dropout": 0.0}
TRAIN = ["--hidden-dim", "8", "--embed-dim", "4", "--limit", "30", "--valid-limit", "3", "--batch-size", "8"]
TRAIN += ["--epochs", "1", "--no-progress"]


# -- files: raw headers, signing, tiny checkpoints ------------------------------------------------
def read_raw(path) -> tuple[dict, bytes]:
    """(the JSON header, the tensor bytes) of a safetensors file."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def write_raw(path, header, body: bytes) -> None:
    """A safetensors file of ``header`` (any JSON, the layout unchecked) and the tensor bytes ``body``."""
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(len(head).to_bytes(8, "little") + head + body)


def tensors_of(path) -> dict:
    """The tensors of a file as they are stored (int8 / int4 not read back)."""
    from safetensors.torch import load

    return load(path.read_bytes())


def sign(path, metadata: dict) -> None:
    """Rewrite ``path`` with the ``__metadata__`` entries ``metadata`` and a checksum that matches them."""
    header, body = read_raw(path)
    entries = {k: v for k, v in metadata.items() if k != checkpoint.CHECKSUM}
    entries[checkpoint.CHECKSUM] = checkpoint.checksum(tensors_of(path), entries)
    write_raw(path, {**header, "__metadata__": entries}, body)


def with_meta(source, target, meta, *, signed: bool = True, checksum: bool = True):
    """A copy of ``source`` whose ``attnkit`` entry holds ``meta`` (any JSON value): re-signed, or with
    ``source``'s checksum kept (``signed=False``), or without a checksum (``checksum=False``)."""
    shutil.copyfile(source, target)
    header, body = read_raw(target)
    entries = dict(header["__metadata__"])
    entries["attnkit"] = json.dumps(meta)
    if not checksum:
        entries.pop(checkpoint.CHECKSUM, None)
    if signed and checksum:
        sign(target, entries)
    else:
        write_raw(target, {**header, "__metadata__": entries}, body)
    return target


def tiny_g2p(path, *, model: str = "rnn", letters=None, phonemes=None, ensemble: int = 0, **config) -> dict:
    """A hand-made G2P checkpoint of an untrained tiny model (an ensemble of ``ensemble`` members);
    returns its metadata."""
    letters = letters or [*SPECIALS, *"abct"]
    phonemes = phonemes or [*SPECIALS, "K", "AE1", "T", "B"]
    config = {**(TINY if model == "rnn" else {"d_model": 8, "heads": 2, "ff_dim": 16, "dropout": 0.0}), **config}
    task = {"name": "g2p", "model": model, "model_config": config, "limit": None, "valid_limit": None,
            "letters": letters, "phonemes": phonemes}  # fmt: skip
    tensors = {}
    for i in range(max(ensemble, 1)):
        torch.manual_seed(i)
        prefix = f"model.members.{i}." if ensemble else "model."
        net = build_model(model, config, len(letters), len(phonemes))
        tensors |= {prefix + k: v for k, v in net.state_dict().items()}
    meta = {"task": task}
    if ensemble:
        meta["ensemble"] = {"members": ensemble, "combine": "probability"}
    checkpoint.save(path, tensors, meta)
    return checkpoint.read_meta(path)


def same_model(a: G2P, b: G2P) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa) and a.task_doc == b.task_doc


class Hung(Exception):
    """Raised by :func:`within` when the code under it runs too long: not an AttentionError."""


@contextlib.contextmanager
def within(seconds: float):
    """Fail with :class:`Hung` unless the block finishes in ``seconds`` (a hang, or a loop building
    layers for ever, is a failure, not a stuck test)."""

    def stop(*_):
        raise Hung(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_g2p(folder / "one.safetensors")
    tiny_g2p(folder / "ens.safetensors", ensemble=2)
    tiny_g2p(folder / "scaled.safetensors", scaled=True)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny G2P run trained by the command line (its files written by the trainer)."""
    out = tmp_path_factory.mktemp("g2p-run") / "run"
    assert main(["train", "g2p", *TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("classify-run") / "run"
    argv = ["train", "classify", "--task", "gloss", "--model", "rnn", "--embed-dim", "8", "--hidden-dim", "8"]
    argv += ["--limit", "30", "--valid-limit", "5", "--batch-size", "16", "--epochs", "1", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    return out


# -- 1. the checksum covers the metadata -----------------------------------------------------------
def _swap(key, i=3, j=4):
    def edit(meta):
        symbols = meta["task"][key]
        symbols[i], symbols[j] = symbols[j], symbols[i]

    return edit


METADATA_EDITS = {
    "letters swapped": ("one", _swap("letters")),
    "phonemes swapped": ("one", _swap("phonemes")),
    "scaled turned off": ("scaled", lambda meta: meta["task"]["model_config"].update(scaled=False)),
    "combine changed": ("ens", lambda meta: meta["ensemble"].update(combine="log")),
    "an entry added": ("one", lambda meta: meta.update(note="hello")),
}


@pytest.mark.parametrize("name", list(METADATA_EDITS))
def test_the_checksum_covers_every_metadata_entry(tiny, tmp_path, capsys, name):
    source, edit = METADATA_EDITS[name]
    meta = checkpoint.read_meta(tiny / f"{source}.safetensors")
    edit(meta)
    bad = with_meta(tiny / f"{source}.safetensors", tmp_path / "bad.safetensors", meta, signed=False)
    with pytest.raises(checkpoint.CheckpointError, match="do not match the sha256 checksum"):
        G2P.load(bad)
    one_line_error(capsys, ["pronounce", "cab", "--model", str(bad)], "do not match the sha256 checksum")
    one_line_error(capsys, ["pronounce", "cab", "--model", str(bad), "--trust-unchecked"], "do not match")


def test_a_header_entry_beside_attnkit_is_covered_too(tiny, tmp_path):
    bad = tmp_path / "bad.safetensors"
    shutil.copyfile(tiny / "one.safetensors", bad)
    header, body = read_raw(bad)
    header["__metadata__"]["comment"] = "added later"
    write_raw(bad, header, body)
    with pytest.raises(checkpoint.CheckpointError, match="do not match the sha256 checksum"):
        checkpoint.load(bad)


def test_the_canonical_metadata_is_the_sorted_entries_as_compact_json():
    entries = {"b": "2", checkpoint.CHECKSUM: "sha256:00", "a": '{"x": 1}'}
    assert checkpoint.canonical_metadata(entries) == b'[["a","{\\"x\\": 1}"],["b","2"]]'
    t = {"w": torch.arange(4.0)}
    assert checkpoint.checksum(t, entries) == checkpoint.checksum(t, dict(reversed(list(entries.items()))))
    assert checkpoint.checksum(t, entries) != checkpoint.checksum(t, {**entries, "b": "3"})
    assert checkpoint.checksum(t, entries).startswith("sha256:")


# -- 2. no checksum, or the old tensor-only one: refused unless trusted ------------------------------
def _unchecked(source, target, old: bool = False):
    """``source`` without its checksum; ``old``: with the tensor-only checksum older attnkit wrote."""
    if source != target:
        shutil.copyfile(source, target)
    header, body = read_raw(target)
    entries = {k: v for k, v in header["__metadata__"].items() if k != checkpoint.CHECKSUM}
    if old:
        entries[checkpoint.OLD_CHECKSUM] = checkpoint.digest(tensors_of(target))
    write_raw(target, {**header, "__metadata__": entries}, body)
    return target


def test_a_file_without_a_checksum_is_refused_unless_trusted(tiny, tmp_path):
    bare = _unchecked(tiny / "one.safetensors", tmp_path / "bare.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="has no checksum") as err:
        G2P.load(bare)
    assert "trust_unchecked=True" in str(err.value) and "--trust-unchecked" in str(err.value)
    assert same_model(G2P.load(bare, trust_unchecked=True), G2P.load(tiny / "one.safetensors"))
    with pytest.raises(checkpoint.CheckpointError, match="has no checksum"):
        checkpoint.load(bare)
    assert checkpoint.load(bare, trust_unchecked=True)[1] == checkpoint.read_meta(bare)


def test_damaged_weights_without_a_checksum_do_not_load_quietly(tiny, tmp_path):
    bad = tmp_path / "bad.safetensors"
    tensors, meta = checkpoint.load(tiny / "one.safetensors")
    meta.pop("format")
    name = min(tensors)
    tensors[name] = tensors[name] * 7
    checkpoint.save(bad, tensors, meta)
    _unchecked(bad, bad)
    with pytest.raises(checkpoint.CheckpointError, match="has no checksum"):
        G2P.load(bad)


def test_an_old_tensor_only_checksum_is_unchecked_and_the_error_says_how_to_resave(tiny, tmp_path):
    old = _unchecked(tiny / "one.safetensors", tmp_path / "old.safetensors", old=True)
    with pytest.raises(checkpoint.CheckpointError, match="covers its tensors only") as err:
        G2P.load(old)
    assert "checkpoint.resave(" in str(err.value) and "--trust-unchecked" in str(err.value)
    assert same_model(G2P.load(old, trust_unchecked=True), G2P.load(tiny / "one.safetensors"))
    flipped = tmp_path / "flipped.safetensors"  # trusted, the old checksum still guards the tensors
    data = bytearray(old.read_bytes())
    data[-9] ^= 0x10
    flipped.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="do not match the sha256 checksum"):
        checkpoint.load(flipped, trust_unchecked=True)
    checkpoint.resave(old)  # in place: then it loads without trust, its tensors and metadata unchanged
    assert same_model(G2P.load(old), G2P.load(tiny / "one.safetensors"))
    before, after = tensors_of(tiny / "one.safetensors"), tensors_of(old)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    entries = read_raw(old)[0]["__metadata__"]
    assert set(entries) == {"attnkit", checkpoint.CHECKSUM}
    assert entries["attnkit"] == read_raw(tiny / "one.safetensors")[0]["__metadata__"]["attnkit"]


def test_resave_keeps_quantized_tensors_as_they_are_stored(tmp_path):
    path = tmp_path / "q.safetensors"
    checkpoint.save(path, checkpoint.quantize({"w": torch.randn(4, 6)}, bits=4), {"n": 1})
    _unchecked(path, path)
    checkpoint.resave(path, tmp_path / "again.safetensors")
    stored = tensors_of(tmp_path / "again.safetensors")
    assert stored["w"].dtype == torch.uint8 and torch.equal(stored["w"], tensors_of(path)["w"])
    assert checkpoint.load(tmp_path / "again.safetensors")[1]["n"] == 1
    checkpoint.resave(tmp_path / "again.safetensors", meta={"n": 2, "decoding": {"beam": 3}})  # entries changed, added
    assert torch.equal(tensors_of(tmp_path / "again.safetensors")["w"], tensors_of(path)["w"])
    assert checkpoint.load(tmp_path / "again.safetensors")[1] | {"format": None} == {
        "n": 2,
        "decoding": {"beam": 3},
        "format": None,
    }


# -- 3. quantization scales ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf"), float("-inf")])
def test_negative_or_non_finite_quantization_scales_are_refused(tmp_path, bits, value):
    stored = checkpoint.quantize({"w": torch.randn(4, 6)}, bits=bits)
    key = f"w:int{bits}_scale"
    stored[key] = stored[key].clone()
    stored[key].view(-1)[1] = value
    with pytest.raises(checkpoint.CheckpointError, match=f"'{key}'"):
        checkpoint.dequantize(stored)
    checkpoint.save(tmp_path / "q.safetensors", stored, {})
    with pytest.raises(checkpoint.CheckpointError, match=f"'{key}'"):
        checkpoint.load(tmp_path / "q.safetensors")


# -- 4. raw errors and hangs: wrong JSON types, huge sizes --------------------------------------------
HEADERS = {  # an edit of the raw header -> what the error names
    "attnkit a number": (lambda h: h["__metadata__"].update(attnkit=5), "'attnkit' must be a string"),
    "attnkit a list": (lambda h: h["__metadata__"].update(attnkit=["x"]), "'attnkit' must be a string"),
    "attnkit not JSON": (lambda h: h["__metadata__"].update(attnkit="{"), "'attnkit' is not JSON"),
    "checksum a number": (
        lambda h: h["__metadata__"].update({checkpoint.CHECKSUM: 7}),
        f"{checkpoint.CHECKSUM!r} must be a string",
    ),
    "metadata a number": (lambda h: h.update(__metadata__=3), "__metadata__ must be an object"),
    "metadata a list": (lambda h: h.update(__metadata__=[]), "__metadata__ must be an object"),
}


@pytest.mark.parametrize("name", list(HEADERS))
def test_metadata_of_the_wrong_json_type_is_one_error_naming_the_key(tiny, tmp_path, capsys, name):
    edit, expected = HEADERS[name]
    bad = tmp_path / "bad.safetensors"
    shutil.copyfile(tiny / "one.safetensors", bad)
    header, body = read_raw(bad)
    edit(header)
    write_raw(bad, header, body)
    for load in (checkpoint.load, checkpoint.read_meta, G2P.load):
        with pytest.raises(checkpoint.CheckpointError, match=expected):
            load(bad)
    one_line_error(capsys, ["pronounce", "cab", "--model", str(bad)], expected)
    one_line_error(capsys, ["eval", str(bad)], expected)


def test_a_header_that_is_not_an_object_is_named(tiny, tmp_path):
    bad = tmp_path / "bad.safetensors"
    write_raw(bad, [1, 2], b"")
    with pytest.raises(checkpoint.CheckpointError, match="header must be a JSON object, got a list"):
        checkpoint.read_meta(bad)


HUGE = {  # a model config field -> its value in a (validly signed) checkpoint, and the error
    "embed_dim=10**12": ("rnn", {"embed_dim": 10**12}, "embed_dim must be an int in 1..65536, got 1000000000000"),
    "layers=10**9": ("rnn", {"layers": 10**9}, "layers must be an int in 1..1024, got 1000000000"),
    "hidden_dim=2**40": ("rnn", {"hidden_dim": 2**40}, "hidden_dim must be an int in 1..65536"),
    "window=10**15": ("rnn", {"window": 10**15, "attention": "local-m"}, "window must be an int in 1..1048576"),
    "encoder_layers=10**9": ("transformer", {"encoder_layers": 10**9}, "encoder_layers must be an int in 1..1024"),
    "max_len=10**10": ("transformer", {"max_len": 10**10}, "max_len must be an int in 1..1048576"),
    "ff_dim=10**7": ("transformer", {"ff_dim": 10**7}, "ff_dim must be an int in 1..65536"),
    "each within its bound, too many in all": (
        "rnn",
        {"hidden_dim": 65536, "layers": 64},
        "over the limit of 2,147,483,648 (2**31)",
    ),
}


@pytest.mark.parametrize("name", list(HUGE))
def test_sizes_in_a_checkpoint_are_bounded_before_anything_is_allocated(tiny, tmp_path, capsys, name):
    model, fields, expected = HUGE[name]
    source = tmp_path / "source.safetensors"
    meta = tiny_g2p(source, model=model)
    meta["task"]["model_config"].update(fields)
    bad = with_meta(source, tmp_path / "bad.safetensors", meta)
    with within(20), pytest.raises(AttentionError, match=re.escape(expected)):
        G2P.load(bad)
    with within(20):
        one_line_error(capsys, ["pronounce", "cab", "--model", str(bad)], expected)


def test_an_ensemble_of_a_billion_members_is_refused(tiny, tmp_path):
    meta = checkpoint.read_meta(tiny / "ens.safetensors")
    for members in (10**9, 65, True):
        meta["ensemble"]["members"] = members
        bad = with_meta(tiny / "ens.safetensors", tmp_path / "bad.safetensors", meta)
        expected = r"ensemble must be \{'members': an int in 1..64"
        with within(20), pytest.raises(checkpoint.CheckpointError, match=expected):
            G2P.load(bad)
    meta["ensemble"]["members"] = 1  # an ensemble of one, in a file of two
    bad = with_meta(tiny / "ens.safetensors", tmp_path / "bad.safetensors", meta)
    with pytest.raises(checkpoint.CheckpointError, match="members=1 but the file holds the weights of 2"):
        G2P.load(bad)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--hidden-dim", "1000000000"], "hidden_dim must be an int in 1..65536, got 1000000000"),
        (["--layers", "100000"], "layers must be an int in 1..1024, got 100000"),
        (["--embed-dim", "70000"], "embed_dim must be an int in 1..65536, got 70000"),
        (["--model", "transformer", "--decoder-layers", "100000"], "decoder_layers must be an int in 1..1024"),
        (["--hidden-dim", "30000", "--layers", "300"], "over the limit of 2,147,483,648 (2**31)"),
    ],
)
def test_training_flags_beyond_the_bounds_are_one_line(tmp_path, capsys, flags, expected):
    with within(30):
        one_line_error(capsys, ["train", "g2p", *flags, "--out", str(tmp_path / "run"), "--no-progress"], expected)
    assert not (tmp_path / "run").exists()


def _int_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.type in ("int", int)]


CONFIGS = {  # every model config, its required fields at their smallest
    "rnn seq2seq": (RNNConfig, {"src_vocab": 5, "tgt_vocab": 5}),
    "transformer seq2seq": (TransformerConfig, {"src_vocab": 5, "tgt_vocab": 5, "d_model": 8, "heads": 2}),
    **{f"{name} classifier": (spec.config, {"vocab": 5, "classes": 3}) for name, spec in CLASSIFIERS.items()},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_size_field_of_every_model_config_has_a_bound(name):
    cls, required = CONFIGS[name]
    for field in _int_fields(cls):
        with pytest.raises(AttentionError, match=f"{field} must be an int in 1..[0-9]+, got {10**13}"):
            cls(**{**required, field: 10**13})


def _models():
    """(name, model class, config) of small and default models of every kind."""
    out = []
    seq2seq = {"rnn": [{}, {"layers": 3, "cell": "gru", "attention": "bahdanau", "bidirectional": False}],
               "transformer": [{}, {"score": "additive", "d_model": 16, "heads": 4, "ff_dim": 8}]}  # fmt: skip
    for kind, variants in seq2seq.items():
        config, model = MODELS[kind]
        out += [(f"{kind} seq2seq {i}", model, config(src_vocab=32, tgt_vocab=87, **f)) for i, f in enumerate(variants)]
    small = {"embed_dim": 8, "hidden_dim": 4, "channels": 8, "d_model": 8, "heads": 2, "ff_dim": 8, "max_len": 16}
    for name, spec in CLASSIFIERS.items():
        names = {f.name for f in dataclasses.fields(spec.config)}
        for i, fields in enumerate(({}, {k: v for k, v in small.items() if k in names})):
            config = spec.config(**{"vocab": 500, "classes": 7, **spec.fixed, **fields})
            out.append((f"{name} classifier {i}", spec.model, config))
    return out


@pytest.mark.parametrize("name, model, config", _models(), ids=[name for name, _, _ in _models()])
def test_a_configs_size_bounds_its_models_parameters_and_buffers_from_above(name, model, config):
    with torch.device("meta"):  # shapes only
        built = model(config)
    real = sum(p.numel() for p in built.parameters()) + sum(b.numel() for b in built.buffers())
    assert real <= config.size() <= 2 * real, (real, config.size())


RLIMITED = """
import resource, sys
from attnkit.tasks.g2p import G2P
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, size + 2**30))  # 1 GiB more, no further
try:
    G2P.load(sys.argv[1])
except BaseException as err:
    print(type(err).__name__, err)
"""


def test_metadata_of_a_wider_model_than_the_file_holds_allocates_nothing(tiny, tmp_path):
    """hidden_dim=4096 is within the bounds (4 GB of weights), but the file holds a model of width 8:
    the shapes are compared on the meta device before the model is built, in a process that could
    not allocate 1 GiB more."""
    meta = checkpoint.read_meta(tiny / "one.safetensors")
    meta["task"]["model_config"]["hidden_dim"] = 4096
    bad = with_meta(tiny / "one.safetensors", tmp_path / "bad.safetensors", meta)
    done = subprocess.run([sys.executable, "-c", RLIMITED, str(bad)], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("CheckpointError") and "does not match the model" in done.stdout, done


# -- 5. the shipped model and training runs carry the new checksum -----------------------------------
def test_the_shipped_model_carries_the_full_checksum():
    path = G2P.shipped_path()
    header, _ = read_raw(path)
    entries = header["__metadata__"]
    assert set(entries) == {"attnkit", checkpoint.CHECKSUM}
    assert entries[checkpoint.CHECKSUM] == checkpoint.checksum(tensors_of(path), entries)
    assert G2P.load().pronounce(["cat"])[0].phones == ("K", "AE1", "T")


def test_a_training_run_writes_the_full_checksum_in_every_file(run):
    for path in sorted(run.glob("*.safetensors")):
        entries = read_raw(path)[0]["__metadata__"]
        assert entries[checkpoint.CHECKSUM] == checkpoint.checksum(tensors_of(path), entries), path
        assert checkpoint.OLD_CHECKSUM not in entries


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """A G2P run and a classifier run stopped after one step (the CLI resumes them)."""
    from attnkit.tasks.classify import ClassifyTask
    from attnkit.tasks.g2p import G2PTask
    from attnkit.train import TrainConfig, Trainer

    folder = tmp_path_factory.mktemp("partial")
    config = TrainConfig(epochs=1, batch_size=8, checkpoint_every=1)
    tasks = {
        "g2p": G2PTask("rnn", TINY, limit=30, valid_limit=3),
        "classify": ClassifyTask("gloss", "rnn", {"embed_dim": 8, "hidden_dim": 8}, limit=30, valid_limit=5),
    }
    for name, task in tasks.items():
        Trainer(task, config, folder / name, progress=False).fit(max_steps=1)
    return folder


def _commands(run, classify_run, partial, bare, bare_classifier, out):
    """Every command that loads a checkpoint, pointed at a file without a checksum."""
    for name in ("g2p", "classify"):
        shutil.copytree(partial / name, out / name)
        _unchecked(partial / name / "last.safetensors", out / name / "last.safetensors")
    return {
        "pronounce": ["pronounce", "cat", "--model", str(bare)],
        "eval g2p": ["eval", str(bare), "--limit", "2", "--beam", "1"],
        "viz g2p": ["viz", "g2p", "cat", "--checkpoint", str(bare), "--out", str(out / "viz")],
        "train g2p --init": ["train", "g2p", *TRAIN, "--init", str(bare), "--out", str(out / "init")],
        "train g2p --teacher": ["train", "g2p", *TRAIN, "--teacher", str(bare), "--out", str(out / "teacher")],
        "train g2p --resume": ["train", "g2p", "--out", str(out / "g2p"), "--resume", "--no-progress"],
        "eval classify": ["eval", str(bare_classifier), "--limit", "3"],
        "explain": ["explain", str(bare_classifier), "a small cat", "--plot", str(out / "explain.png")],
        "train classify --resume": ["train", "classify", "--out", str(out / "classify"), "--resume", "--no-progress"],
    }


COMMANDS = ["pronounce", "eval g2p", "viz g2p", "train g2p --init", "train g2p --teacher", "train g2p --resume",
            "eval classify", "explain", "train classify --resume"]  # fmt: skip


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_that_loads_a_checkpoint_refuses_an_unchecked_one_unless_trusted(
    run, classify_run, partial, tmp_path, capsys, name
):
    bare = _unchecked(run / "best.safetensors", tmp_path / "bare.safetensors")
    bare_classifier = _unchecked(classify_run / "best.safetensors", tmp_path / "bare-classifier.safetensors")
    argv = _commands(run, classify_run, partial, bare, bare_classifier, tmp_path)[name]
    one_line_error(capsys, argv, "has no checksum")
    assert main([*argv, "--trust-unchecked"]) == 0, capsys.readouterr().err
    if "--resume" in argv:  # the resumed run wrote its files again, with the full checksum
        last = tmp_path / argv[1] / "last.safetensors"
        entries = read_raw(last)[0]["__metadata__"]
        assert entries[checkpoint.CHECKSUM] == checkpoint.checksum(tensors_of(last), entries)


def test_python_loaders_take_trust_unchecked(run, classify_run, tmp_path):
    bare = _unchecked(classify_run / "best.safetensors", tmp_path / "bare.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="has no checksum"):
        Classifier.load(bare)
    assert Classifier.load(bare, trust_unchecked=True).labels == Classifier.load(classify_run).labels
    g2p = _unchecked(run / "best.safetensors", tmp_path / "g2p.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="has no checksum"):
        checkpoint.average([g2p, run / "best.safetensors"])
    assert checkpoint.average([g2p, run / "best.safetensors"], trust_unchecked=True)[1]["task"]["name"] == "g2p"


# -- 6. hypothesis: random damage to a real checkpoint's metadata ------------------------------------
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, 2, 3, 8, -1, 100, 10**6, 10**9, 10**12, 2**31, 2**62, 2**63, 2**64, 10**30, -(10**12)]),
    st.integers(),
    st.sampled_from([0.0, 0.5, -0.5, 1.5, 1e300, float("nan"), float("inf")]),
    st.sampled_from(["", "g2p", "rnn", "transformer", "lstm", "gru", "log", "probability", "a", "K", "<pad>"]),
    st.text(max_size=5),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=5,
)


def _paths(doc, prefix=()):
    """Every path (a tuple of keys and indices) into the JSON document ``doc``, the root first."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):  # a vocabulary's first symbols stand for the rest
            yield from _paths(v, (*prefix, i))


# a model's config fields (the vocabulary sizes are the metadata's; the sizes thrice, the likelier
# drawn) and one no config has
CONFIG_FIELDS = {
    kind: [f.name for f in dataclasses.fields(cls) for _ in range(3 if f.type == "int" else 1)
           if f.name not in ("src_vocab", "tgt_vocab")] + ["x"]
    for kind, (cls, _) in MODELS.items()
}  # fmt: skip
SIZES = st.one_of(st.integers(-2, 12), st.sampled_from([65536, 65537, 1024, 1025, 2**20 + 1, 10**9, 10**12, 2**63]))


@st.composite
def mutations(draw, meta: dict):
    """``meta`` with one or two random edits, and how the file is written (``signed`` with a
    checksum that matches, ``kept``: the original's checksum, ``trusted``: none). An edit changes a
    value, deletes a key, adds one, replaces a subtree (the whole document too) by a number, string,
    list or object, sets a model config field (a huge int, often), rewrites the ensemble document,
    or leaves things as they are."""
    doc = copy.deepcopy(meta)
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(["set", "set", "delete", "add", *["config"] * 3, "ensemble", "noop", "noop", "root"]))
        task = doc.get("task") if isinstance(doc, dict) else None
        config = task.get("model_config") if isinstance(task, dict) else None
        if op == "config" and isinstance(config, dict):
            config[draw(st.sampled_from(CONFIG_FIELDS[meta["task"]["model"]]))] = draw(st.one_of(SIZES, SIZES, VALUES))
            continue
        if op == "root":
            doc = draw(VALUES)
            continue
        if op == "ensemble" and isinstance(doc, dict):
            members = draw(st.one_of(st.integers(0, 3), SIZES, VALUES))
            combine = draw(st.sampled_from(["probability", "log", "max", None]))
            doc["ensemble"] = draw(st.sampled_from([{"members": members, "combine": combine}, members, None]))
            continue
        paths = list(_paths(doc))[1:]  # below the root
        if not paths:
            continue
        path = draw(st.sampled_from(paths))
        if op == "add" and isinstance(_get(doc, path), dict):
            key = draw(st.sampled_from(["members", "combine", "layers", "hidden_dim", "x", "format", "task"]))
            _get(doc, path)[key] = draw(VALUES)
        elif op == "delete" and path:
            del _get(doc, path[:-1])[path[-1]]
        elif op == "noop":
            doc = _set(doc, path, copy.deepcopy(_get(doc, path)))
        else:
            doc = _set(doc, path, draw(VALUES))
    how = draw(st.sampled_from(["signed", "kept", "trusted"]))
    return doc, how


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _set(doc, path, value):
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _loads_or_refuses(original: G2P, source, tmp_path, meta, mutated, how):
    """Loading the mutated file raises an AttentionError (only), in bounded time, or loads; a no-op
    mutation (the same JSON text) loads what the original holds; a changed file whose checksum was
    kept never loads."""
    path = tmp_path / "mutated.safetensors"
    with_meta(source, path, mutated, signed=how == "signed", checksum=how != "trusted")
    same = json.dumps(mutated) == json.dumps(meta)
    try:
        with within(30):
            loaded = G2P.load(path, trust_unchecked=how == "trusted")
    except AttentionError as err:
        assert not same, f"a no-op mutation ({how}) was refused: {err}"
        return
    assert same or how != "kept", "a changed file loaded with the checksum of the original"
    if same:
        assert same_model(loaded, original)


@pytest.fixture(scope="module")
def originals(tiny):
    return {name: (G2P.load(tiny / f"{name}.safetensors"), checkpoint.read_meta(tiny / f"{name}.safetensors"))
            for name in ("one", "ens")}  # fmt: skip


@pytest.mark.parametrize("name", ["one", "ens"])
def test_random_metadata_damage_is_an_attention_error_or_a_faithful_load(tiny, originals, tmp_path, name):
    original, meta = originals[name]

    @settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], **SETTINGS)
    @given(mutation=mutations(meta))
    def check(mutation):
        mutated, how = mutation
        _loads_or_refuses(original, tiny / f"{name}.safetensors", tmp_path, meta, mutated, how)

    check()


RAW = st.one_of(
    st.just(("delete", "attnkit")),
    st.just(("delete", "__metadata__")),
    st.tuples(st.just("entry"), VALUES),  # __metadata__.attnkit replaced by any JSON value
    st.tuples(st.just("checksum"), VALUES),
    st.tuples(st.just("metadata"), VALUES),  # __metadata__ itself
    st.tuples(st.just("extra"), VALUES),  # an entry beside attnkit
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture], **SETTINGS)
@given(edit=RAW)
def test_random_damage_to_the_raw_header_is_one_attention_error(tiny, tmp_path, edit):
    kind, value = edit
    path = tmp_path / "raw.safetensors"
    shutil.copyfile(tiny / "one.safetensors", path)
    header, body = read_raw(path)
    entries = header["__metadata__"]
    if kind == "delete":
        (header if value == "__metadata__" else entries).pop(value)
    elif kind == "entry":
        entries["attnkit"] = value
    elif kind == "checksum":
        entries[checkpoint.CHECKSUM] = value
    elif kind == "metadata":
        header["__metadata__"] = value
    else:
        entries["x"] = value
    write_raw(path, header, body)
    for trust in (False, True):
        with within(30), pytest.raises(AttentionError):
            G2P.load(path, trust_unchecked=trust)
    with within(30):
        try:
            checkpoint.read_meta(path)
        except AttentionError:
            pass


def test_the_property_tests_draw_each_kind_of_damage(originals):
    """The strategies reach what the issue names: huge ints, deleted keys, a subtree replaced."""
    _, meta = originals["one"]
    seen = set()

    @settings(max_examples=150, **SETTINGS)
    @given(mutation=mutations(meta))
    def collect(mutation):
        mutated, how = mutation
        seen.add(how)
        flat = json.dumps(mutated)
        if any(str(n) in flat for n in (10**9, 10**12, 2**40, 2**64)):
            seen.add("huge")
        if not isinstance(mutated, dict) or not isinstance(mutated.get("task"), dict):
            seen.add("subtree")
        elif len(mutated["task"]) < len(meta["task"]):
            seen.add("deleted")

    collect()
    assert seen >= {"signed", "kept", "trusted", "huge", "subtree", "deleted"}, seen


def test_nan_floats_in_json_are_refused_as_values(tiny, tmp_path):
    meta = checkpoint.read_meta(tiny / "one.safetensors")
    meta["task"]["model_config"]["dropout"] = math.nan
    bad = with_meta(tiny / "one.safetensors", tmp_path / "bad.safetensors", meta)
    with pytest.raises(AttentionError, match="dropout must be a finite number"):
        G2P.load(bad)
