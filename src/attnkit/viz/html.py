"""An interactive page of attention weights: one self-contained HTML file, no library, no network.

Shapes: L layers, H heads, Tq query tokens, Tk key tokens. A ``View`` is one attention of a model
(encoder self-attention, cross-attention, ...) with its weights (L, H, Tq, Tk); ``write_html``
writes one or more views to a page that works opened from disk (file://): pick the view, the layer
and the head (or the mean of heads); hover a query token to see the keys it attends to, hover a key
token to see the queries that attend to it; click a token to keep it selected.

Everything is inline: the weights as JSON rounded to 4 decimals, the script and the style. Tokens
reach the page only as JSON strings, escaped so that no ``</script>`` can close the script, and the
script puts them in the page with ``textContent`` only.

>>> import tempfile, torch
>>> w = torch.softmax(torch.randn(2, 4, 3, 3), dim=-1)  # (L, H, Tq, Tk)
>>> v = View("self-attention", ["the", "cat", "sat"], ["the", "cat", "sat"], w)
>>> v.layers
['layer 0', 'layer 1']
>>> write_html(Path(tempfile.mkdtemp()) / "attention.html", v).suffix
'.html'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

import torch
from torch import Tensor

from ..errors import AttentionError, shape_str

__all__ = ["View", "write_html"]


@dataclass
class View:
    """One attention to show; checked when built (a bad view raises ``AttentionError`` here)."""

    name: str  # shown in the view picker: "encoder self-attention", "cross-attention", ...
    queries: list[str]  # the tokens along Tq (the rows of the weights)
    keys: list[str]  # the tokens along Tk (the columns)
    weights: Tensor  # (L, H, Tq, Tk), each row a distribution over the keys (or zeros)
    layers: list[str] | None = None  # a name per layer; None: "layer 0", "layer 1", ...

    def __post_init__(self) -> None:
        self.queries = [str(t) for t in self.queries]
        self.keys = [str(t) for t in self.keys]
        w = self.weights
        where = f"View {self.name!r}: weights"
        if not isinstance(w, Tensor):
            raise AttentionError(f"{where} must be a torch.Tensor of shape (L, H, Tq, Tk), got {type(w).__name__}")
        n_layers = "L" if self.layers is None else f"L=len(layers)={len(self.layers)}"
        expected = f"({n_layers}, H, Tq=len(queries)={len(self.queries)}, Tk=len(keys)={len(self.keys)})"
        if (
            w.dim() != 4
            or (self.layers is not None and w.shape[0] != len(self.layers))
            or w.shape[2:] != (len(self.queries), len(self.keys))
        ):
            raise AttentionError(f"{where} has shape {shape_str(w.shape)} but expected {expected}")
        if w.shape[0] == 0 or w.shape[1] == 0:
            raise AttentionError(f"{where} has shape {shape_str(w.shape)} but expected at least one layer and one head")
        bad = ~torch.isfinite(w)  # (L, H, Tq, Tk)
        if bad.any():
            first = shape_str(bad.nonzero()[0])
            raise AttentionError(
                f"{where} has {int(bad.sum())} NaN or infinite values (the first at {first}) but expected finite weights"
            )
        self.layers = (
            [f"layer {i}" for i in range(w.shape[0])] if self.layers is None else [str(n) for n in self.layers]
        )


def write_html(path: str | Path, views: list[View] | View, *, title: str = "attention") -> Path:
    """Write ``views`` to the page ``path`` (``.html``), one self-contained file; return its path."""
    path = Path(path)
    if path.suffix.lower() != ".html":
        raise AttentionError(f"path {str(path)!r} must end in .html")
    if isinstance(views, View):
        views = [views]
    if not isinstance(views, (list, tuple)):
        raise AttentionError(f"views must be a View or a list of Views, got {type(views).__name__}")
    if not views:
        raise AttentionError("views is empty but expected at least one View")
    for i, v in enumerate(views):
        if not isinstance(v, View):
            raise AttentionError(f"views[{i}] must be a View, got {type(v).__name__}")
    data = {"views": [_view_data(v) for v in views]}
    page = _PAGE.format(title=escape(title), style=_STYLE, script=_SCRIPT, data=_script_json(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _view_data(view: View) -> dict:
    """The view as the page reads it: head H of ``weights`` is the mean of the H heads."""
    w = view.weights.detach().to("cpu", torch.float64)  # (L, H, Tq, Tk)
    w = torch.cat([w, w.mean(dim=1, keepdim=True)], dim=1)  # (L, H + 1, Tq, Tk)
    return {
        "name": view.name,
        "queries": view.queries,
        "keys": view.keys,
        "layers": view.layers,
        "heads": view.weights.shape[1],
        "weights": torch.round(w, decimals=4).tolist(),
    }


def _script_json(data: dict) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' (so no '</script>' or '<!--'), escaped as \\u003c..."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<div id="controls">
  <label id="view-control">view <select id="view"></select></label>
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <span id="legend">weight 0 <span class="swatch"></span> 1
    <span class="hint">hover a query: its keys; hover a key: its queries; click: keep; Esc: release</span></span>
</div>
<div id="board">
  <div class="column" id="queries"><div class="heading">queries</div></div>
  <svg id="lines" aria-hidden="true"></svg>
  <div class="column" id="keys"><div class="heading">keys</div></div>
</div>
<script type="application/json" id="data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .5em; }
#controls { display: flex; flex-wrap: wrap; gap: .5em 1.5em; align-items: center; margin-bottom: 1em; }
#legend { display: inline-flex; align-items: center; gap: .4em; color: #555; }
.swatch { display: inline-block; width: 6em; height: 1em; border: 1px solid #ccc;
  background: linear-gradient(to right, rgba(37, 99, 235, 0), rgba(37, 99, 235, 1)); }
.hint { margin-left: 1em; font-size: .9em; }
#board { display: grid; grid-template-columns: max-content 160px max-content; }
.column { display: flex; flex-direction: column; }
.heading { height: 24px; font-weight: 600; color: #555; }
#queries .heading { text-align: right; }
#lines { width: 100%; height: 100%; stroke: #2563eb; stroke-width: 2; }
.token { display: flex; align-items: center; gap: .5em; height: 22px; padding: 0 .4em; margin: 1px 0;
  border-radius: 3px; cursor: pointer; }
.token[data-side="query"] { flex-direction: row-reverse; }
.token.active { outline: 2px solid #222; }
.token .text { max-width: 20em; overflow: hidden; text-overflow: ellipsis; white-space: pre; }
.token .weight { min-width: 4.5em; font: 12px ui-monospace, monospace; color: #444; }
.token[data-side="query"] .weight { text-align: right; }
"""

_SCRIPT = """
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const viewSelect = $("view"), layerSelect = $("layer"), headSelect = $("head"), svg = $("lines");
const SVG_NS = svg.namespaceURI;  // from the inline <svg>: this file names no URL
const RGB = "37, 99, 235";  // highlight: this colour with opacity = weight, as in the legend
let active = null;  // the hovered or kept token: { side: "query" | "key", index }
let kept = false;  // a click keeps the active token while the layer or head changes

const clamp = (w) => Math.min(1, Math.max(0, w));
const tokens = (side) => $(side === "query" ? "queries" : "keys").querySelectorAll(".token");
const currentView = () => DATA.views[Number(viewSelect.value)];

function fill(select, labels, values) {
  const old = select.value;
  select.replaceChildren(...labels.map((label, i) => {
    const option = document.createElement("option");
    option.value = values[i];
    option.textContent = label;
    return option;
  }));
  if (values.includes(old)) select.value = old;
}

// the weights (Tq, Tk) of the chosen layer and head; the mean of heads is stored as head H
function matrix() {
  const view = currentView();
  const head = headSelect.value === "mean" ? view.heads : Number(headSelect.value);
  return view.weights[Number(layerSelect.value)][head];
}

function setActive(side, index) {
  active = side === null ? null : { side, index };
  render();
}

function buildColumn(side, words) {
  const column = $(side === "query" ? "queries" : "keys");
  column.querySelectorAll(".token").forEach((t) => t.remove());
  words.forEach((word, i) => {
    const token = document.createElement("div");
    token.className = "token";
    token.dataset.side = side;
    token.dataset.index = String(i);
    token.title = word;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = word;
    const weight = document.createElement("span");
    weight.className = "weight";
    token.append(text, weight);
    token.addEventListener("mouseenter", () => { if (!kept) setActive(side, i); });
    token.addEventListener("mouseleave", () => { if (!kept) setActive(null); });
    token.addEventListener("click", () => {
      const same = active && active.side === side && active.index === i;
      kept = !(kept && same);
      setActive(side, i);
    });
    column.append(token);
  });
}

function render() {
  const w = matrix();  // (Tq, Tk)
  for (const side of ["query", "key"]) {
    for (const t of tokens(side)) {
      t.classList.remove("active");
      t.style.backgroundColor = "";
      delete t.dataset.weight;
      t.querySelector(".weight").textContent = "";
    }
  }
  if (active) {
    // a query's row w[i, :] over the keys, or a key's column w[:, j] over the queries
    const other = active.side === "query" ? "key" : "query";
    const row = active.side === "query" ? w[active.index] : w.map((r) => r[active.index]);
    tokens(active.side)[active.index].classList.add("active");
    tokens(other).forEach((t, j) => {
      const shown = row[j].toFixed(4);
      t.dataset.weight = shown;
      t.querySelector(".weight").textContent = shown;
      t.style.backgroundColor = `rgba(${RGB}, ${clamp(row[j])})`;
    });
  }
  drawLines(w);
}

// a line from query i to key j, opacity w[i, j]: the active token's lines, or all of them (w >= 0.01)
function drawLines(w) {
  const box = svg.getBoundingClientRect();
  const centre = (t) => { const r = t.getBoundingClientRect(); return r.top + r.height / 2 - box.top; };
  const qy = Array.from(tokens("query"), centre), ky = Array.from(tokens("key"), centre);
  const lines = document.createDocumentFragment();
  const line = (i, j) => {
    const opacity = clamp(w[i][j]);
    if (opacity < 0.01) return;
    const l = document.createElementNS(SVG_NS, "line");
    l.setAttribute("x1", "0");
    l.setAttribute("y1", String(qy[i]));
    l.setAttribute("x2", String(box.width));
    l.setAttribute("y2", String(ky[j]));
    l.setAttribute("stroke-opacity", String(opacity));
    lines.append(l);
  };
  if (active && active.side === "query") ky.forEach((_, j) => line(active.index, j));
  else if (active) qy.forEach((_, i) => line(i, active.index));
  else qy.forEach((_, i) => ky.forEach((_, j) => line(i, j)));
  svg.replaceChildren(lines);
}

function showView() {
  const view = currentView();
  fill(layerSelect, view.layers, view.layers.map((_, i) => String(i)));
  const heads = Array.from({ length: view.heads }, (_, h) => String(h));
  fill(headSelect, [...heads.map((h) => `head ${h}`), "mean of heads"], [...heads, "mean"]);
  buildColumn("query", view.queries);
  buildColumn("key", view.keys);
  active = null;
  kept = false;
  render();
}

fill(viewSelect, DATA.views.map((v) => v.name), DATA.views.map((_, i) => String(i)));
$("view-control").hidden = DATA.views.length < 2;
viewSelect.addEventListener("change", showView);
layerSelect.addEventListener("change", render);
headSelect.addEventListener("change", render);
window.addEventListener("resize", render);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") { kept = false; setActive(null); } });
showView();
"""
