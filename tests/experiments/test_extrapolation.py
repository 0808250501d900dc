"""``attnkit experiment extrapolation``: the quick run, the verdict's rule, the words it tests on,
and a stopped run keeping the methods it finished."""

import json
import re

import pytest
from test_experiments import numbers_in

from attnkit.cli import main
from attnkit.errors import AttentionError
from attnkit.experiments import CONDITIONS, EXPERIMENTS, FAILS, HOLDS, base, extrapolation
from attnkit.viz.static import curves


def test_the_quick_run_draws_and_judges_from_its_json(tmp_path, monkeypatch, capsys, one_thread):
    pictures = []
    monkeypatch.setattr(base, "curves", lambda panels, path, title: pictures.append(panels) or curves(panels, path))
    assert main(["experiment", "extrapolation", "--quick", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "extrapolation.json").read_text())
    exp = EXPERIMENTS["extrapolation"]
    assert doc["methods"] == ["sinusoidal", "learned", "rope", "alibi", "t5"] and doc["buckets"][0] == "1-7"
    assert all(len(doc[m]["per"]) == 4 and doc[m]["train_words"] == 64 for m in doc["methods"])
    assert not (tmp_path / "extrapolation-work").exists()
    assert pictures == [exp.figure(doc)]
    drawn = {float(v) for p in pictures[0] for xs, ys in p.series.values() for v in (*xs, *ys)}
    assert drawn <= numbers_in(doc)
    assert (doc["verdict"], doc["why"]) == exp.verdict(doc)
    assert f"verdict: {doc['verdict']}" in capsys.readouterr().out
    report = (tmp_path / "extrapolation.md").read_text()
    assert "**The paper:**" in report and "Train Short, Test Long" in report and "arXiv:2108.12409" in report


def made_up(per: dict[str, list[float]]) -> dict:
    """A document with the PER per bucket that :func:`extrapolation.verdict` reads."""
    return {"methods": list(per), "buckets": ["1-7", "8-10", "11-13", "14+"], **{m: {"per": p} for m, p in per.items()}}


@pytest.mark.parametrize(
    "per, expected",
    [
        ({"sinusoidal": [10, 30, 50, 70], "alibi": [11, 20, 25, 30], "rope": [9, 25, 40, 60]}, HOLDS),
        ({"sinusoidal": [10, 30, 50, 70], "alibi": [11, 20, 25, 30], "rope": [9, 25, 24, 60]}, CONDITIONS),
        ({"sinusoidal": [10, 30, 50, 70], "alibi": [11, 20, 25, 30], "rope": [25, 25, 40, 60]}, HOLDS),
        (
            {"sinusoidal": [10, 30, 50, 70], "alibi": [11, 20, 25, 30], "rope": [20, 25, 26, 31]},
            CONDITIONS,
        ),  # grows less
        ({"sinusoidal": [10, 30, 50, 70], "alibi": [11, 20, 25, 30], "rope": [9, 25, 24, 29]}, FAILS),
        ({"sinusoidal": [10, 30, 25, 30], "alibi": [11, 20, 25, 30]}, HOLDS),  # a tie for lowest counts
    ],
)
def test_the_verdict_follows_its_rule(per, expected):
    verdict, why = extrapolation.verdict(made_up(per))
    assert verdict == expected
    assert "alibi 11.0 / 20.0 / 25.0 / 30.0 (+19.0)" in why


def test_the_buckets_hold_their_lengths_and_the_short_one_leaves_out_the_choosing_words():
    config = extrapolation.ExtrapolationConfig(select_words=50, bucket_words=40)
    words = extrapolation.evaluation_words(config)
    for entries, (low, high) in zip(words, extrapolation.buckets(7)):
        assert len(entries) == 40 and all(low <= len(e.word) <= (high or 99) for e in entries)
    task = extrapolation.ShortWords("transformer", {}, limit=30, valid_limit=50, letters_max=7)
    assert {e.word for e in task.valid}.isdisjoint(e.word for e in words[0])
    assert max(len(src) for src, _ in task.pairs) <= 7 and len({tuple(s) for s, _ in task.pairs}) == 30


def test_a_method_measured_before_is_read_back_not_trained_again(tmp_path, monkeypatch):
    config = extrapolation.QUICK
    kept = {"parameters": 1, "wer": [1.0], "per": [2.0]}
    (tmp_path / "alibi").mkdir()
    (tmp_path / "alibi" / "result.json").write_text(json.dumps({"config": extrapolation._key(config), "result": kept}))
    trained = []
    monkeypatch.setattr(extrapolation, "_train", lambda *args: trained.append(args) or 1 / 0)
    assert extrapolation.measure_method(config, "alibi", tmp_path, []) == kept and not trained
    other = extrapolation.ExtrapolationConfig(**{**extrapolation._key(config), "epochs": 3})  # another run
    with pytest.raises(ZeroDivisionError):
        extrapolation.measure_method(other, "alibi", tmp_path, [])
    assert len(trained) == 1


@pytest.mark.parametrize(
    "methods, message",
    [
        (["sinusoidal", "rope"], "it must include 'alibi'"),
        (["alibi"], "at least one method to compare it with"),
        (["alibi", "nope"], "methods has ['nope'] outside"),
    ],
)
def test_the_config_rejects_methods_its_verdict_cannot_use(methods, message):
    with pytest.raises(AttentionError, match=re.escape(message)):
        extrapolation.ExtrapolationConfig(methods=methods)
