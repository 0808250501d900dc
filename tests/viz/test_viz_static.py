"""Static pictures: heatmaps, head grids and alignments are written, long inputs are cut with a
note, bad input and a missing extra are clear errors."""

import sys

import pytest
import torch

from attnkit import AttentionError
from attnkit.cli import main
from attnkit.viz import alignment, grid, heatmap

PNG = b"\x89PNG\r\n\x1a\n"


def test_smoke_heatmap_png_and_svg(tmp_path):
    w = torch.rand(3, 4).softmax(-1)
    assert heatmap(w, list("abc"), list("wxyz"), tmp_path / "h.png").read_bytes()[:8] == PNG
    assert b"<svg" in heatmap(w, list("abc"), list("wxyz"), tmp_path / "h.svg").read_bytes()[:400]


def test_long_inputs_are_cut_and_the_title_says_so(tmp_path, monkeypatch):
    import matplotlib.axes

    titles = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, **kw: titles.append(t))
    tokens = [f"t{i}" for i in range(300)]
    heatmap(torch.rand(300, 300), tokens, tokens, tmp_path / "long.png", title="long", max_tokens=100)
    assert titles == ["long (first 100 of 300 x first 100 of 300 tokens shown)"]


def test_long_inputs_get_thinned_tick_labels(tmp_path, monkeypatch):
    import matplotlib.axes

    shown = {}
    monkeypatch.setattr(
        matplotlib.axes.Axes, "set_xticks", lambda self, ticks, labels=None, **kw: shown.update(x=labels)
    )
    tokens = [f"t{i}" for i in range(180)]
    heatmap(torch.rand(2, 180), ["a", "b"], tokens, tmp_path / "thin.png")
    assert shown["x"] == tokens[::3]  # 180 labels -> every third: at most 60 per axis


def test_smoke_grid_of_layers_by_heads(tmp_path):
    w = torch.rand(2, 3, 5, 5).softmax(-1)
    assert grid(w, list("abcde"), tmp_path / "g.png", layers=["first", "second"]).read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: heatmap(torch.rand(3, 4), list("ab"), list("wxyz"), p / "a.png"),
         r"weights has shape \(3, 4\) but expected \(Tq, Tk\) with \(Tq, Tk\) = \(len\(queries\), len\(keys\)\) = \(2, 4\)"),
        (lambda p: grid(torch.rand(3, 4, 4), list("abcd"), p / "a.png"), r"weights has shape \(3, 4, 4\) but expected \(L, H, Tq, Tk\)"),
        (lambda p: grid(torch.rand(2, 1, 2, 2), list("ab"), p / "a.png", layers=["x"]), "layers has 1 names but weights has L = 2"),
        (lambda p: heatmap(torch.rand(2, 2), list("ab"), list("ab"), p / "a.pdf"), r"plot file '.*a.pdf' must end in .png or .svg"),
        (lambda p: alignment(torch.rand(2, 3), list("abc"), ["X"], p / "a.png"),
         r"weights has shape \(2, 3\) but expected \(len\(target\), len\(source\)\) = \(1, 3\)"),
    ],
)  # fmt: skip
def test_bad_input_is_named(tmp_path, call, message):
    with pytest.raises(AttentionError, match=message):
        call(tmp_path)


def test_a_missing_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(AttentionError, match=r"pictures need matplotlib: pip install 'attnkit\[viz\]'"):
        heatmap(torch.rand(2, 2), list("ab"), list("ab"), tmp_path / "a.png")


def test_tour_saves_its_tables_as_heatmaps(tmp_path, capsys):
    assert main(["tour", "--section", "cross", "--plot", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 5 and files[0] == "01-global-score-dot.png"
    assert "5 heatmaps in" in capsys.readouterr().out


def _xticks(xs: list[float], **panel) -> list[float]:
    """The x ticks ``viz.static._scales`` leaves on a plot of ``xs``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnkit.viz.static import Panel, _scales

    fig, ax = plt.subplots()
    ax.plot(xs, [1.0] * len(xs))
    _scales(ax, Panel("t", "x", "y", {"a": (xs, [1.0] * len(xs))}, **panel))
    ticks = list(ax.get_xticks())
    plt.close(fig)
    return ticks


def test_curves_tick_whole_number_x_values_at_whole_numbers_only():
    assert all(float(t).is_integer() for t in _xticks([0, 1, 2, 3]))
    assert not all(float(t).is_integer() for t in _xticks([0.5, 1.25, 2.0]))


def test_curves_tick_a_log_axis_at_the_measured_values_only_when_they_are_apart():
    assert _xticks([4, 16, 64, 256], logx=True) == [4, 16, 64, 256]
    crowded = [70_935, 100_439, 104_535, 264_663, 299_671]  # labels at each would overlap
    assert _xticks(crowded, logx=True) != crowded
