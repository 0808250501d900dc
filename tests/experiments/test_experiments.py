"""``attnkit experiment``: each experiment runs at a toy size, its picture is drawn from its JSON,
its verdict follows from the JSON's numbers by its rule, and the command line fails in one line."""

import dataclasses
import json
import math
import re

import pytest
import torch
from cli_errors import one_line_error

from attnkit.cli import main
from attnkit.errors import AttentionError
from attnkit.experiments import (
    CONDITIONS,
    EXPERIMENTS,
    FAILS,
    HOLDS,
    VERDICTS,
    alignment,
    base,
    bottleneck,
    hardsoft,
    parallel,
    parameters,
    scaling,
)
from attnkit.models import TransformerConfig, TransformerSeq2Seq
from attnkit.viz.static import Panel, curves

TINY_TRANSFORMER = {"d_model": 16, "heads": 2, "ff_dim": 32, "encoder_layers": 1, "decoder_layers": 1}
TINY_RNN = {"embed_dim": 8, "hidden_dim": 16}
TOY = {
    "alignment": alignment.AlignmentConfig(
        kinds={
            "luong": ("rnn", {"attention": "luong-general", "scaled": True, **TINY_RNN}),
            "transformer": ("transformer", TINY_TRANSFORMER),
        },
        aligner_words=50, aligner_iterations=2, words=24, valid_words=10, epochs=1, batch_size=8, warmup_steps=1,
    ),
    "hardsoft": hardsoft.HardSoftConfig(
        kinds=["softmax", "hard (REINFORCE)", "local-m", "local-p", "sparsemax"], rnn=TINY_RNN, words=24,
        valid_words=6, epochs=1, batch_size=8, warmup_steps=1,
    ),
    "parameters": parameters.ParametersConfig(
        kinds={
            parameters.BASELINE: ("rnn", {"attention": "none", "embed_dim": 8}, "hidden_dim", [8, 16]),
            "luong": ("rnn", {"attention": "luong-general", "embed_dim": 8}, "hidden_dim", [8, 16]),
            "transformer": ("transformer", {"encoder_layers": 1, "decoder_layers": 1}, "d_model", [8, 16]),
        },
        words=24, valid_words=6, epochs=1, batch_size=8, warmup_steps=1,
    ),
    "bottleneck": bottleneck.BottleneckConfig(
        kinds={
            "none": ("rnn", {"attention": "none", **TINY_RNN}),
            "luong": ("rnn", {"attention": "luong-general", "scaled": True, **TINY_RNN}),
            "transformer": ("transformer", {**TINY_TRANSFORMER, "max_len": 256}),
        },
        phrases=24, max_words=3, valid_phrases=9, phrase_epochs=1, phrase_batch=8, words=24, valid_words=12,
        word_epochs=1, word_batch=8, warmup_steps=1, epoch_valid=3,
    ),
    "scaling": scaling.ScalingConfig(
        dims=[4, 64, 1024], queries=16, seeds=2, shipped_words=12, d_model=16, heads=2, ff_dim=32, layers=1,
        train_limit=40, valid_limit=8, epochs=2, batch_size=32, warmup_steps=2,
    ),
    "parallel": parallel.ParallelConfig(
        lengths=[4, 8], batch_size=4, warmup=0, steps=2, decode_words=4, transformer=TINY_TRANSFORMER,
        rnn={"hidden_dim": 16, "embed_dim": 8},
    ),
}  # fmt: skip


def numbers_in(doc) -> set[float]:
    """Every number anywhere in the JSON document ``doc``."""
    if isinstance(doc, dict):
        return set().union(*map(numbers_in, doc.values())) if doc else set()
    if isinstance(doc, list):
        return set().union(*map(numbers_in, doc)) if doc else set()
    return {float(doc)} if isinstance(doc, int | float) and not isinstance(doc, bool) else set()


def drawn(panels: list[Panel]) -> set[float]:
    return {float(v) for p in panels for xs, ys in p.series.values() for v in (*xs, *ys)}


@pytest.mark.parametrize("name", sorted(TOY))
def test_each_experiment_runs_at_a_toy_size_and_its_picture_and_verdict_come_from_its_json(
    name, tmp_path, monkeypatch, capsys, one_thread
):
    monkeypatch.setitem(EXPERIMENTS, name, dataclasses.replace(EXPERIMENTS[name], quick=TOY[name]))
    pictures = []
    monkeypatch.setattr(base, "curves", lambda panels, path, title: pictures.append(panels) or curves(panels, path))
    assert main(["experiment", name, "--quick", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / f"{name}.json").read_text())
    exp = EXPERIMENTS[name]
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert not (tmp_path / f"{name}-work").exists()  # checkpoints go once the results are written
    assert pictures == [exp.figure(doc)]  # the picture is the JSON's
    assert drawn(pictures[0]) <= numbers_in(doc)  # every number drawn is in the JSON, as drawn
    verdict, why = exp.verdict(doc)
    assert (doc["verdict"], doc["why"]) == (verdict, why) and verdict in VERDICTS
    assert f"verdict: {verdict}" in capsys.readouterr().out
    report = (tmp_path / f"{name}.md").read_text()
    assert f"**Verdict: {verdict}.**" in report and all(n.seed in report for n in exp.notes)


def scaling_doc(unscaled_top: float, scaled_max: float, wer_dot: float, wer_scaled: float) -> dict:
    """A made-up document with the numbers :func:`scaling.verdict` reads."""
    random = {
        "dims": [4, 1024],
        "dot": {"saturated": [0.0, unscaled_top], "jacobian_norm": [0.3, 0.05]},
        "scaled_dot": {"saturated": [0.0, scaled_max], "jacobian_norm": [0.24, 0.24]},
    }
    training = {"d_k": 64, "dot": {"epoch": [1, 2], "wer": [90.0, wer_dot]}}
    training["scaled_dot"] = {"epoch": [1, 2], "wer": [90.0, wer_scaled]}
    return {"random": random, "training": training}


@pytest.mark.parametrize(
    "doc, expected",
    [
        (scaling_doc(0.8, 0.0, 40.0, 35.0), HOLDS),  # saturates unscaled, not scaled; scaled trains better
        (scaling_doc(0.8, 0.0, 40.0, 39.5), CONDITIONS),  # the same, but training gains < 1 point
        (scaling_doc(0.8, 0.0, 35.0, 40.0), CONDITIONS),  # scaled trains worse
        (scaling_doc(0.3, 0.0, 40.0, 30.0), FAILS),  # the unscaled softmax does not saturate
        (scaling_doc(0.8, 0.2, 40.0, 30.0), FAILS),  # the scaled one saturates too
    ],
)
def test_the_scaling_verdict_follows_its_rule(doc, expected):
    assert scaling.verdict(doc)[0] == expected


def parallel_doc(ratios: list[float]) -> dict:
    lengths = [10, 20, 40, 80, 160][: len(ratios)]
    models = {m: {"parameters": 4_000_000} for m in ("rnn", "transformer")}
    return {"lengths": lengths, "train_ratio": ratios, **models}


@pytest.mark.parametrize(
    "ratios, expected, crossing",
    [
        ([0.9, 0.8, 0.6, 0.5, 0.4], HOLDS, 10),  # faster at the G2P length
        ([1.2, 1.1, 0.9, 0.6, 0.5], CONDITIONS, 40),  # faster from 40 on
        ([1.2, 0.9, 1.05, 0.8, 0.7], CONDITIONS, 80),  # a dip at 20 does not count: it must stay faster
        ([1.3, 1.2, 1.1, 1.0, 1.2], FAILS, None),  # never faster (1.0 is not faster)
        ([1.3, 0.9, 0.9, 0.9, 1.1], FAILS, None),  # slower at the longest length
    ],
)
def test_the_parallel_verdict_follows_its_rule(ratios, expected, crossing):
    doc = parallel_doc(ratios)
    assert parallel.crossover(doc["lengths"], ratios) == crossing
    verdict, why = parallel.verdict(doc)
    assert verdict == expected
    if expected == CONDITIONS:
        assert f"faster from S = T = {crossing} on" in why


def bottleneck_doc(per: dict[str, list[float | None]]) -> dict:
    """A made-up document with the phrase PER per word count that :func:`bottleneck.verdict` reads."""
    doc = {"kinds": list(per)}
    for kind, pers in per.items():
        doc[kind] = {"phrases": {"words": list(range(1, len(pers) + 1)), "per": pers}}
    return doc


@pytest.mark.parametrize(
    "per, expected",
    [
        ({"none": [10, 20, 40], "luong": [8, 9, 12], "transformer": [9, 10, 11]}, HOLDS),
        ({"none": [10, 20, 40], "luong": [8, 9, 12], "transformer": [9, 30, 50]}, CONDITIONS),
        ({"none": [10, 20, 40], "luong": [8, 9, 24], "transformer": [9, 30, 50]}, FAILS),  # 16 > 15 = half of 30
        ({"none": [10, 12, 14], "luong": [8, 9, 9]}, FAILS),  # no bottleneck: 4 < 5 points lost
        ({"none": [10, 20, None], "luong": [8, 9, None]}, HOLDS),  # a word count without phrases is skipped
        ({"none": [10, 20, 20], "luong": [0, 5, 20]}, FAILS),  # holds up in share, but not below none
    ],
)
def test_the_bottleneck_verdict_follows_its_rule(per, expected):
    assert bottleneck.verdict(bottleneck_doc(per))[0] == expected


def test_bottleneck_scores_phrases_by_their_word_count():
    spellings = ["ab", "ab_cd", "ab_cd", "a_b_c"]
    hyps = [("A",), ("A", "_", "B"), ("X",), ("A", "_", "B", "_", "C")]
    refs = [[("A",)], [("A", "_", "B")], [("A", "_", "B")], [("A", "_", "B", "_", "C")]]
    out = bottleneck.by_words(spellings, hyps, refs, 4)
    assert out["words"] == [1, 2, 3, 4] and out["phrases"] == [1, 2, 1, 0]
    assert out["wer"] == [0.0, 50.0, 0.0, None] and out["letters"] == [2.0, 5.0, 5.0, None]
    assert out["per"][1] == 100 * 3 / 6  # "X" against A _ B: 1 substitution + 2 deletions over 6 reference phonemes


def hardsoft_doc(gaps: dict[str, float]) -> dict:
    """A made-up document: softmax at 30% WER, each other kind ``gaps[kind]`` points above it."""
    kinds = [hardsoft.SOFT, *gaps]
    return {"kinds": kinds, hardsoft.SOFT: {"wer": 30.0}, **{k: {"wer": 30.0 + g} for k, g in gaps.items()}}


@pytest.mark.parametrize(
    "gaps, expected",
    [
        ({"hard (REINFORCE)": 5.0, "local-m": 0.5, "local-p": -1.0}, HOLDS),
        ({"hard (REINFORCE)": 5.0, "local-m": 0.5, "local-p": 1.0}, CONDITIONS),  # local-p 1 point worse: not within
        ({"hard (REINFORCE)": 0.9, "local-m": 0.5, "local-p": 0.0}, CONDITIONS),  # hard trains about as well
        ({"hard (REINFORCE)": -2.0, "local-m": 3.0, "local-p": 0.0}, FAILS),
    ],
)
def test_the_hardsoft_verdict_follows_its_rule(gaps, expected):
    assert hardsoft.verdict(hardsoft_doc(gaps))[0] == expected


def alignment_doc(errors: dict[str, float], diagonal: float) -> dict:
    return {"kinds": list(errors), "diagonal_error": diagonal, **{k: {"error": e} for k, e in errors.items()}}


@pytest.mark.parametrize(
    "errors, diagonal, expected",
    [
        ({"luong": 0.1, "transformer": 0.2, alignment.REVERSED: 0.12}, 0.4, HOLDS),
        ({"luong": 0.1, "transformer": 0.5, alignment.REVERSED: 0.12}, 0.4, CONDITIONS),
        ({"luong": 0.2, "transformer": 0.2, alignment.REVERSED: 0.2}, 0.15, FAILS),  # no better than the diagonal
        ({"luong": 0.3, "transformer": 0.3, alignment.REVERSED: 0.3}, 0.6, FAILS),  # above 25%
    ],
)
def test_the_alignment_verdict_follows_its_rule(errors, diagonal, expected):
    assert alignment.verdict(alignment_doc(errors, diagonal))[0] == expected


def test_argmax_error_counts_phonemes_pointing_outside_their_unit():
    w = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.0, 0.6, 0.4], [0.3, 0.3, 0.4]])  # 3 phonemes + the end
    reference = [(0,), (1, 2), (2,)]  # the second phoneme's unit is two letters
    assert alignment.argmax_error(w, reference) == (1, 3)  # argmax 0, 2, 1: the third is wrong
    assert alignment.argmax_error(w, reference, shift=1) == (1, 3)  # one step late: 0, 0, 2: the second is wrong


@pytest.mark.parametrize(
    "wers, target, expected",
    [
        ([60.0, 40.0, 30.0], 40.0, 1000.0),  # reached exactly at the middle size
        ([60.0, 50.0, 30.0], 40.0, math.sqrt(1000.0 * 10000.0)),  # halfway in WER: the geometric mean
        ([35.0, 30.0, 20.0], 40.0, 100.0),  # the smallest size already reaches it
        ([60.0, 50.0, 45.0], 40.0, None),  # never
    ],
)
def test_parameters_needed_interpolates_in_log_parameters(wers, target, expected):
    got = parameters.needed([100, 1000, 10000], wers, target)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    "needs, expected",
    [
        ({"luong": 1e5, "transformer": 2e5}, HOLDS),  # the baseline needs 1e6
        ({"luong": 1e5, "transformer": 2e6}, CONDITIONS),
        ({"luong": None, "transformer": 2e6}, FAILS),
    ],
)
def test_the_parameters_verdict_follows_its_rule(needs, expected):
    doc = {"kinds": [parameters.BASELINE, *needs], "target_wer": 40.0, parameters.BASELINE: {"needed": 1e6}}
    doc |= {k: {"needed": v} for k, v in needs.items()}
    assert parameters.verdict(doc)[0] == expected


def test_jacobian_norm_is_the_frobenius_norm_of_the_softmax_jacobian():
    scores = torch.randn(3, 7, dtype=torch.float64) * 4
    for row in scores:
        jac = torch.autograd.functional.jacobian(lambda s: s.softmax(-1), row)  # (Tk, Tk)
        assert torch.allclose(scaling.jacobian_norm(row.softmax(-1)), jac.norm(), atol=1e-12)
    assert scaling.jacobian_norm(torch.tensor([0.0, 1.0, 0.0])) == 0  # one-hot: no gradient through it


def test_transformer_score_reaches_every_attention_and_keeps_checkpoints_loadable():
    default = TransformerSeq2Seq(TransformerConfig(10, 12, **TINY_TRANSFORMER))
    unscaled = TransformerSeq2Seq(TransformerConfig(10, 12, **TINY_TRANSFORMER, score="dot"))
    attentions = [m for m in unscaled.modules() if type(m).__name__ == "MultiHeadAttention"]
    assert len(attentions) == 3 and all(s.name == "dot" for m in attentions for s in m.head_scores)
    unscaled.load_state_dict(default.state_dict())  # the same parameters: a default checkpoint loads
    with pytest.raises(AttentionError, match="score='nope' is unknown"):
        TransformerConfig(10, 12, score="nope")


def test_experiment_list_names_each_experiment_and_its_claim(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    for name, e in EXPERIMENTS.items():
        assert f"{name}  " in out and e.claim in out


def test_experiment_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    one_line_error(capsys, ["experiment", "nope"], "experiment 'nope' is unknown; expected one of")
    one_line_error(capsys, ["experiment"], "experiment needs a NAME")
    (tmp_path / "file").write_text("")
    one_line_error(capsys, ["experiment", "scaling", "--out", str(tmp_path / "file")], "is a file")
    one_line_error(capsys, ["experiment", "parallel", "--out", str(tmp_path / "file" / "x")], "a file")


def test_curves_rejects_a_series_whose_x_and_y_differ_in_length(tmp_path):
    with pytest.raises(AttentionError, match="has 2 x values and 1 y values"):
        curves([Panel("t", "x", "y", {"a": ([1, 2], [3])})], tmp_path / "c.png")


def test_attention_sharpness_reads_one_row_per_decoder_step_of_each_word():
    from attnkit.experiments import g2p
    from attnkit.tasks.g2p import G2PTask

    task = G2PTask("rnn", {"hidden_dim": 8, "embed_dim": 4}, limit=1, valid_limit=5)
    torch.manual_seed(0)
    stats = g2p.attention_sharpness(g2p.Run(task.build(), task, []))
    assert stats["rows"] == sum(len(e.pronunciations[0]) + 1 for e in task.valid)  # BOS + each phoneme
    assert 0 < stats["entropy"] <= max(math.log(len(e.word)) for e in task.valid) + 1e-9
    letters = sum((len(e.pronunciations[0]) + 1) * len(task.letters.encode(e.word)) for e in task.valid)
    assert stats["support"] == pytest.approx(letters / stats["rows"])  # a softmax row weighs every letter

    sparse = G2PTask("rnn", {"hidden_dim": 8, "embed_dim": 4, "attention": "gumbel"}, limit=1, valid_limit=5)
    assert g2p.attention_sharpness(g2p.Run(sparse.build(), sparse, []))["support"] == 1.0  # argmax at inference


def test_an_experiment_training_stopped_midway_continues_from_its_checkpoint(tmp_path, one_thread):
    """g2p.train in a folder with a checkpoint resumes it: a run stopped after some steps and run
    again ends with the weights and history of a run that never stopped; a finished run is loaded."""
    from attnkit.experiments import g2p

    size = g2p.TrainSize(24, 4, 2, 8, 2e-3, 1, 0)  # 3 steps an epoch
    config = {**TINY_RNN, "dropout": 0.3}
    whole = g2p.train("rnn", config, size, tmp_path / "whole")
    g2p.trainer("rnn", config, size, tmp_path / "stopped").fit(max_steps=4)  # stopped in the second epoch
    resumed = g2p.train("rnn", config, size, tmp_path / "stopped")
    again = g2p.train("rnn", config, size, tmp_path / "stopped")  # finished: loaded, not trained
    for run in (resumed, again):
        assert [r["wer"] for r in run.history] == [r["wer"] for r in whole.history]
        for a, b in zip(run.model.state_dict().values(), whole.model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: bottleneck.BottleneckConfig(kinds={"luong": ("rnn", {})}), "it must include 'none'"),
        (lambda: parameters.ParametersConfig(kinds={}), "it must include 'rnn, no attention'"),
        (lambda: hardsoft.HardSoftConfig(kinds=["softmax", "local-m"]), "lacks ['hard (REINFORCE)', 'local-p']"),
        (lambda: hardsoft.HardSoftConfig(kinds=[*hardsoft.KINDS, "nope"]), "kinds has ['nope'] outside"),
    ],
)
def test_experiment_configs_reject_kinds_their_verdict_cannot_use(make, message):
    with pytest.raises(AttentionError, match=re.escape(message)):
        make()
