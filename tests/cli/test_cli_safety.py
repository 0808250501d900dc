"""The command line never shows a traceback: damaged checkpoints, the file system, bad numbers,
Ctrl-C and missing extras are each one line on stderr and a non-zero exit (issue 11)."""

import errno
import json
import os
import re
import shutil
import sys

import pytest
from cli_errors import one_line_error
from safetensors import safe_open
from safetensors.torch import save_file

from attnkit.cli import main
from attnkit.tasks.g2p import G2P
from attnkit.tasks.g2p.predictor import NAMED
from attnkit.train import Trainer, checkpoint

TINY = ["--hidden-dim", "8", "--embed-dim", "4", "--limit", "40", "--valid-limit", "5", "--batch-size", "8"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("g2p-run")
    assert main(["train", "g2p", *TINY, "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    return out


def one_line(capsys, argv, status=2, expected=""):
    """``attnkit argv`` exits ``status`` with one line on stderr, no traceback, containing ``expected``."""
    assert main(argv) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnkit: "), err
    assert "Traceback" not in err[0] and expected in err[0], err[0]
    return err[0]


def rewrite(source, target, edit=None, header=None):
    """Copy the checkpoint ``source`` to ``target`` with ``edit(meta)`` applied to its JSON metadata
    and a checksum that matches it (as a hand-edited file re-saved would have: a checksum shows a
    file is whole, not that its metadata is sound); ``header(h)`` edits the raw header instead, after."""
    with safe_open(str(source), framework="pt") as f:
        h = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if edit is not None:
        meta = json.loads(h["attnkit"])
        meta = edit(meta) or meta
        h["attnkit"] = json.dumps(meta)
        h[checkpoint.CHECKSUM] = checkpoint.checksum(tensors, h)
    if header is not None:
        header(h)
    save_file(tensors, str(target), metadata=h)
    return target


def _set(path, value):
    def edit(meta):
        *keys, last = path.split(".")
        doc = meta
        for k in keys:
            doc = doc[k]
        if value is KeyError:
            del doc[last]
        else:
            doc[last] = value

    return edit


# -- checkpoint metadata -------------------------------------------------------------------------
DAMAGED = {
    "hidden_dim as a string": (
        _set("task.model_config.hidden_dim", "8"),
        "task.model_config.hidden_dim must be an int",
    ),
    "model_config a list": (_set("task.model_config", []), "task.model_config must be an object"),
    "task a list": (_set("task", ["g2p"]), "is not a g2p model"),
    "no phonemes": (_set("task.phonemes", KeyError), "task has no 'phonemes'"),
    "letters a string": (_set("task.letters", "abc"), "task.letters must be a list"),
    "letters of numbers": (_set("task.letters", [0, 1, 2]), "task.letters[0] must be a string"),
    "letters without specials": (_set("task.letters", ["a", "b"]), "letters must begin with"),
    "no model": (_set("task.model", KeyError), "task has no 'model'"),
    "model a number": (_set("task.model", 5), "task.model must be a string"),
    "unknown model": (_set("task.model", "lstm"), "model='lstm' is unknown"),
    "limit a string": (_set("task.limit", "40"), "task.limit must be an int or null"),
    "bool as an int": (_set("task.model_config.bidirectional", 1), "bidirectional must be a boolean"),
    "negative size": (_set("task.model_config.hidden_dim", -3), "hidden_dim must be an int in 1..2**62, got -3"),
    "unknown config key": (_set("task.model_config.heads", 2), "has unknown keys ['heads']"),
    "dropout a string": (_set("task.model_config.dropout", "nan"), "dropout must be a finite number"),
    "unknown attention": (_set("task.model_config.attention", "luong"), "attention='luong' is unknown"),
    "wrong size": (_set("task.model_config.hidden_dim", 9), "does not match the model"),
    "no task": (_set("task", KeyError), "is not a g2p model (task None)"),
    "meta a list": (lambda meta: [meta], "was not written by attnkit"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_damaged_metadata_is_one_line_naming_the_field(run, tmp_path, capsys, name):
    edit, expected = DAMAGED[name]
    bad = rewrite(run / "best.safetensors", tmp_path / "best.safetensors", edit)
    one_line(capsys, ["pronounce", "cat", "--model", str(bad)], 2, expected)
    nameless = name in ("task a list", "no task")  # eval cannot tell which evaluator it needs
    one_line(capsys, ["eval", str(bad), "--limit", "2"], 2, "attnkit eval knows" if nameless else expected)


RESUME_DAMAGED = {
    "train a string": (_set("train", "fast"), "train must be an object"),
    "lr a string": (_set("train.lr", "0.002"), "train.lr must be a finite number"),
    "no epochs and an extra key": (_set("train.epoch", 3), "train has unknown keys ['epoch']"),
    "progress step a string": (_set("progress.step", "3"), "progress.step must be an int"),
    "progress a list": (_set("progress", []), "progress must be an object"),
    "optimizer a list": (_set("optimizer", []), "does not hold a resumable optimizer"),
    "limit of -5": (_set("task.limit", -5), "limit must be a whole number >= 1"),
    "hidden_dim as a string": (_set("task.model_config.hidden_dim", "8"), "model_config.hidden_dim must be an int"),
}


@pytest.mark.parametrize("name", list(RESUME_DAMAGED))
def test_resuming_a_damaged_run_is_one_line(run, tmp_path, capsys, name):
    edit, expected = RESUME_DAMAGED[name]
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    rewrite(run / "last.safetensors", folder / "last.safetensors", edit)
    one_line(capsys, ["train", "g2p", "--out", str(folder), "--resume", "--no-progress"], 2, expected)


# -- checksums and non-finite weights ---------------------------------------------------------------
def test_a_flipped_byte_in_the_weights_is_caught_by_the_checksum(run, tmp_path, capsys):
    data = bytearray((run / "best.safetensors").read_bytes())
    data[-100] ^= 0x10  # inside the last tensor's bytes
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    one_line(capsys, ["pronounce", "cat", "--model", str(bad)], 2, "do not match the sha256 checksum")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_rejected(run, tmp_path, capsys, value):
    tensors, meta = checkpoint.load(run / "best.safetensors")
    meta.pop("format")
    name = min(k for k in tensors if tensors[k].is_floating_point())
    tensors[name].view(-1)[0] = value
    bad = tmp_path / "nan.safetensors"
    checkpoint.save(bad, tensors, meta)  # a valid checksum: the weights themselves are bad
    one_line(capsys, ["pronounce", "cat", "--model", str(bad)], 2, f"tensor {name!r} holds NaN or infinity")


def test_checkpoints_without_a_checksum_load_only_trusted_and_never_with_nan(run, tmp_path):
    old = rewrite(run / "best.safetensors", tmp_path / "old.safetensors", header=lambda h: h.pop(checkpoint.CHECKSUM))
    with pytest.raises(checkpoint.CheckpointError, match="has no checksum"):
        G2P.load(old)
    assert G2P.load(old, trust_unchecked=True).pronounce(["cat"])[0].phones
    tensors, meta = checkpoint.load(old, trust_unchecked=True)
    name = next(k for k in sorted(tensors) if tensors[k].is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(tmp_path / "old-nan.safetensors"), metadata={"attnkit": json.dumps(meta)})
    with pytest.raises(checkpoint.CheckpointError, match="holds NaN or infinity"):
        G2P.load(tmp_path / "old-nan.safetensors", trust_unchecked=True)


def test_the_shipped_model_carries_a_checksum_that_matches():
    path = G2P.shipped_path()
    with safe_open(str(path), framework="pt") as f:
        entries = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert checkpoint.checksum(tensors, entries) == entries[checkpoint.CHECKSUM]


@pytest.mark.parametrize("name", ["fast", "accurate"])
def test_the_shipped_models_fit_the_package_budget_and_load_as_they_were_packed(name):
    """At most 20 MB in the package for both (issue 13); an ensemble is read back as one, every member whole."""
    assert sum(G2P.shipped_path(n).stat().st_size for n in NAMED) <= 20_000_000
    path = G2P.shipped_path(name)
    meta = checkpoint.read_meta(path)
    g2p = G2P.load(name)
    assert g2p.path == str(path)
    expected = meta.get("ensemble", {"members": 1})["members"]
    assert len(g2p.members) == expected == len(meta["members"])
    assert g2p.parameters() == expected * sum(p.numel() for p in g2p.members[0].parameters())


# -- invalid numbers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "g2p", "--limit", "0"], "argument --limit: must be a whole number >= 1, got '0'"),
        (["train", "g2p", "--limit", "-5"], "argument --limit: must be a whole number >= 1, got '-5'"),
        (["train", "g2p", "--valid-limit", "0"], "argument --valid-limit: must be a whole number >= 1"),
        (["train", "g2p", "--lr", "nan"], "argument --lr: must be a finite number >= 0, got 'nan'"),
        (["train", "g2p", "--lr", "inf"], "argument --lr: must be a finite number >= 0, got 'inf'"),
        (["train", "g2p", "--lr=-1e-3"], "argument --lr: must be a finite number >= 0"),
        (["train", "g2p", "--lr", "0"], "lr must be > 0, got 0.0"),
        (["train", "g2p", "--epochs", "0"], "epochs must be > 0, got 0"),
        (["train", "g2p", "--batch-size", "-1"], "argument --batch-size: must be a whole number >= 0"),
        (["train", "g2p", "--dropout", "nan"], "argument --dropout: must be a finite number >= 0"),
        (["train", "g2p", "--hidden-dim", "2.5"], "argument --hidden-dim: must be a whole number, got '2.5'"),
        (["train", "classify", "--min-count", "0"], "argument --min-count: must be a whole number >= 1"),
        (["train", "classify", "--limit", "-5"], "argument --limit: must be a whole number >= 1"),
        (["train", "classify", "--lr", "nan"], "argument --lr: must be a finite number >= 0"),
        (["eval", "--limit", "0"], "argument --limit: must be a whole number >= 1"),
        (["eval", "--beam", "0"], "argument --beam: must be a whole number >= 1"),
        (["pronounce", "cat", "--beam", "-2"], "argument --beam: must be a whole number >= 1"),
    ],
)
def test_invalid_numbers_are_rejected_in_one_line(capsys, argv, expected):
    one_line_error(capsys, argv, expected)


def test_argparse_errors_are_one_line_too(capsys):
    one_line(capsys, ["train", "g2p", "--no-such-flag"], 2, "unrecognized arguments: --no-such-flag")
    one_line(capsys, [], 2, "the following arguments are required")


# -- the file system ---------------------------------------------------------------------------------
def test_out_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    one_line(capsys, ["train", "g2p", *TINY, "--out", str(tmp_path / "f")], 2, "--out")
    one_line(capsys, ["train", "g2p", *TINY, "--out", str(tmp_path / "f" / "run")], 2, "a file; --out takes a folder")
    one_line(capsys, ["viz", "g2p", "cat", "--out", str(tmp_path / "f")], 2, "is a file; --out takes a folder")
    one_line(capsys, ["bench", "--only", "nope", "--out", str(tmp_path)], 2, "--only 'nope' is unknown")
    one_line(capsys, ["bench", "--out", str(tmp_path / "f")], 2, "is a file; --out takes a folder")


def test_eval_json_into_a_missing_folder_is_refused_before_evaluating(run, tmp_path, capsys):
    target = tmp_path / "missing" / "m.json"
    one_line(capsys, ["eval", str(run), "--limit", "2", "--json", str(target)], 2, "does not exist")
    one_line(capsys, ["eval", str(run), "--limit", "2", "--json", str(tmp_path)], 2, "is a folder")


def test_plot_paths_that_cannot_be_written(tmp_path, capsys):
    long = "a" * 300 + ".png"
    one_line(capsys, ["pronounce", "cat", "--plot", str(tmp_path / long)], 2, "this file system allows")
    one_line(capsys, ["pronounce", "cat", "--plot", str(tmp_path / "no" / "a.png")], 2, "does not exist")
    one_line(capsys, ["pronounce", "cat", "--plot", str(tmp_path)], 2, "must end in .png or .svg")
    one_line(capsys, ["pronounce", "cat", "dog", "--plot", str(tmp_path / ("b" * 250 + ".png"))], 2, "allows")


def test_tour_plot_refuses_a_file_and_a_picture_name(tmp_path, capsys):
    existing = tmp_path / "attention.png"
    existing.write_bytes(b"x")
    one_line(capsys, ["tour", "--section", "cross", "--plot", str(existing)], 2, "is a file; --plot takes a folder")
    one_line(capsys, ["tour", "--section", "cross", "--plot", str(tmp_path / "tour.png")], 2, "--plot takes a folder")
    assert not (tmp_path / "tour.png").exists()


def test_a_full_disk_during_training_is_one_line_and_leaves_no_temporary(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    out = tmp_path / "run"
    line = one_line(capsys, ["train", "g2p", *TINY, "--out", str(out), "--no-progress"], 1, "No space left on device")
    assert "config.json" in line  # the file it was writing
    assert not list(out.glob(".*.tmp"))


def test_a_read_only_folder_is_one_line(run, tmp_path, capsys, monkeypatch):
    from pathlib import Path

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "write_text", denied)
    line = one_line(capsys, ["eval", str(run), "--limit", "2", "--json", str(tmp_path / "m.json")], 1)
    assert line == f"attnkit: error: Permission denied: {str(tmp_path / 'm.json')!r}"


# -- Ctrl-C -------------------------------------------------------------------------------------------
def interrupt_at(monkeypatch, step):
    real = Trainer._step

    def step_or_interrupt(self, batch, total):
        if self.state["step"] == step:
            raise KeyboardInterrupt
        return real(self, batch, total)

    monkeypatch.setattr(Trainer, "_step", step_or_interrupt)


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 3)
    argv = ["train", "g2p", *TINY, "--epochs", "1", "--checkpoint-every", "2", "--out", str(out), "--no-progress"]
    line = one_line(capsys, argv, 130)
    command = f"attnkit train g2p --out {out} --resume"
    assert (
        line
        == f"attnkit: interrupted; the last checkpoint is {out / 'last.safetensors'} (step 2); continue with: {command}"
    )
    monkeypatch.undo()
    assert main(command.split()[1:] + ["--no-progress"]) == 0


def test_ctrl_c_before_the_first_checkpoint(tmp_path, capsys, monkeypatch):
    interrupt_at(monkeypatch, 1)
    argv = ["train", "g2p", *TINY, "--out", str(tmp_path / "run"), "--no-progress"]
    one_line(capsys, argv, 130, "interrupted before the first checkpoint; nothing to resume")


def test_ctrl_c_inside_the_checkpoint_write(tmp_path, capsys, monkeypatch):
    def replace(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    out = tmp_path / "run"
    one_line(capsys, ["train", "g2p", *TINY, "--out", str(out), "--no-progress"], 130, "interrupted")
    assert not list(out.glob(".*.tmp"))


def test_resume_removes_the_temporary_files_of_a_killed_write(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    stale = [folder / ".last.safetensors.k1ll3d.tmp", folder / ".history.json.x.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    (folder / "notes.tmp").write_text("not ours")
    assert main(["train", "g2p", "--out", str(folder), "--resume", "--no-progress"]) == 0
    assert not any(p.exists() for p in stale) and (folder / "notes.tmp").exists()


def test_ctrl_c_elsewhere_is_one_line_and_130(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(G2P, "pronounce", interrupted)
    assert one_line(capsys, ["pronounce", "cat"], 130) == "attnkit: interrupted"


def test_attnkit_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("ATTNKIT_DEBUG", "1")
    with pytest.raises(checkpoint.CheckpointError):
        main(["eval", "no/such/file.safetensors"])


# -- extras -------------------------------------------------------------------------------------------
def test_viz_without_matplotlib_says_so_before_writing_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "pictures"
    one_line(capsys, ["viz", "g2p", "cat", "--out", str(out)], 2, "pip install 'attnkit[viz]'")
    assert not out.exists() or not list(out.iterdir())
    one_line(capsys, ["viz", "bert", "a cat", "--out", str(out)], 2, "pip install 'attnkit[viz]'")
    one_line(capsys, ["tour", "--plot", str(out)], 2, "pip install 'attnkit[viz]'")
    one_line(capsys, ["pronounce", "cat", "--plot", str(tmp_path / "a.png")], 2, "pip install 'attnkit[viz]'")
    assert capsys.readouterr().out == ""  # nothing decoded first


# -- progress ------------------------------------------------------------------------------------------
def shown(err: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err)


def test_eval_and_pronounce_show_progress_on_a_terminal(run, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws as on a terminal
    assert main(["eval", str(run), "--limit", "7", "--beam", "1"]) == 0
    captured = capsys.readouterr()
    assert "7/7" in shown(captured.err) and "decoding test" in shown(captured.err)
    assert "7/7" not in captured.out
    assert main(["pronounce", "cat", "dog", "bird"]) == 0
    assert "3/3" in shown(capsys.readouterr().err)


def test_viz_shows_a_spinner_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert main(["viz", "g2p", "cat", "--out", str(tmp_path)]) == 0
    assert "G2P: loading, decoding, drawing" in shown(capsys.readouterr().err)


def test_no_progress_where_stderr_is_not_a_terminal(run, capsys, monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    assert main(["eval", str(run), "--limit", "3", "--beam", "1"]) == 0
    assert capsys.readouterr().err == ""


# -- a base install -------------------------------------------------------------------------------------
def test_numpy_is_a_core_dependency():
    """torch warns "Failed to initialize NumPy" on every import without numpy: the wheel alone must
    bring it (the test extra is not enough)."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert any(re.match(r"numpy\b", d) for d in project["dependencies"])


def test_no_warning_on_any_command(capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["pronounce", "cat"]) == 0
        assert main(["tour", "--section", "regions"]) == 0
    assert capsys.readouterr().err == ""
