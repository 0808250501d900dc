"""Benchmark cases: each kind of attention against the textbook maths and the peer a user would pick.

A case is a function of its sizes that returns named contenders. A contender is a factory that
builds its inputs and modules (seeded, so every contender sees the same numbers) and returns
``step(backward: bool)``: one forward pass, and with ``backward`` the backward pass of a fixed
linear loss. The contender named ``attnkit`` is what the others are compared with.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

import attnkit
from attnkit import NORMALIZERS, masks

Step = Callable[[bool], None]
Factory = Callable[[], Step]


@dataclass
class Case:
    name: str
    sizes: dict[str, int]
    contenders: dict[str, Factory]  # "attnkit" first
    missing: dict[str, str] = field(default_factory=dict)  # peer -> how to install it

    def peer(self, name: str, module: str, factory: Factory) -> Case:
        """Add a contender that needs ``module`` (from the ``bench`` extra), or note it as missing."""
        if _have(module):
            self.contenders[name] = factory
        else:
            self.missing[name] = "pip install 'attnkit[bench]'"
        return self


def _tensors(*shapes, grad=True, seed=0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen).requires_grad_(grad) for s in shapes]


def _stepper(forward: Callable[[], Tensor], leaves: list[Tensor]) -> Step:
    def step(backward: bool) -> None:
        for t in leaves:
            t.grad = None
        if backward:
            forward().sum().backward()
        else:
            with torch.no_grad():
                forward()

    return step


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(f"keras runs on the {keras.backend.backend()!r} backend; set KERAS_BACKEND=torch")
    return keras


def mha(b=8, t=512, d=512, h=8) -> Case:
    """MultiHeadAttention(score="scaled_dot") against torch.nn.MultiheadAttention."""

    def ours():
        (x,) = _tensors((b, t, d))
        torch.manual_seed(0)
        m = attnkit.MultiHeadAttention(d, h)
        return _stepper(lambda: m(x).output, [x, *m.parameters()])

    def torch_mha():
        (x,) = _tensors((b, t, d))
        torch.manual_seed(0)
        m = torch.nn.MultiheadAttention(d, h, batch_first=True)
        return _stepper(lambda: m(x, x, x, need_weights=False)[0], [x, *m.parameters()])

    def textbook():
        (x,) = _tensors((b, t, d))
        torch.manual_seed(0)
        proj = torch.nn.Linear(d, 3 * d)
        out = torch.nn.Linear(d, d)

        def forward():
            q, k, v = proj(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
            w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), dim=-1)  # (B, H, T, T)
            return out((w @ v).transpose(1, 2).reshape(b, t, d))

        return _stepper(forward, [x, *proj.parameters(), *out.parameters()])

    return Case(
        "mha",
        {"B": b, "T": t, "D": d, "H": h},
        {"attnkit": ours, "torch.nn.MultiheadAttention": torch_mha, "textbook": textbook},
    )


def additive(b=8, t=512, d=256) -> Case:
    """Additive (Bahdanau) attention against the textbook broadcast and Keras AdditiveAttention."""

    def inputs():
        q, k, v = _tensors((b, t, d), (b, t, d), (b, t, d))
        torch.manual_seed(0)
        params = {n: p.requires_grad_() for n, p in attnkit.SCORES["additive"].init_params(d, d, d).items()}
        return q, k, v, params

    def ours():
        q, k, v, p = inputs()
        return _stepper(
            lambda: attnkit.attention(q, k, v, score="additive", score_params=p).output, [q, k, v, *p.values()]
        )

    def textbook():
        q, k, v, p = inputs()

        def forward():
            hidden = torch.tanh((q @ p["W_q"]).unsqueeze(2) + (k @ p["W_k"]).unsqueeze(1))  # (B, Tq, Tk, A)
            return torch.softmax(hidden @ p["v"], dim=-1) @ v

        return _stepper(forward, [q, k, v, *p.values()])

    def keras_additive():
        keras = _keras()
        q, k, v, p = inputs()
        layer = keras.layers.AdditiveAttention()  # scores = Σ scale · tanh(q + k): no W_q, W_k projections
        return _stepper(lambda: layer([q, v, k]), [q, k, v])

    case = Case("additive", {"B": b, "Tq": t, "Tk": t, "D": d, "A": d}, {"attnkit": ours, "textbook": textbook})
    return case.peer("keras.AdditiveAttention", "keras", keras_additive)


def dot_keras(b=8, t=512, d=256) -> Case:
    """Dot-product (Luong) attention against Keras Attention."""

    def ours():
        q, k, v = _tensors((b, t, d), (b, t, d), (b, t, d))
        return _stepper(lambda: attnkit.attention(q, k, v, score="dot").output, [q, k, v])

    def keras_dot():
        keras = _keras()
        q, k, v = _tensors((b, t, d), (b, t, d), (b, t, d))
        layer = keras.layers.Attention()
        return _stepper(lambda: layer([q, v, k]), [q, k, v])

    def textbook():
        q, k, v = _tensors((b, t, d), (b, t, d), (b, t, d))
        return _stepper(lambda: torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v, [q, k, v])

    case = Case("dot", {"B": b, "Tq": t, "Tk": t, "D": d}, {"attnkit": ours, "textbook": textbook})
    return case.peer("keras.Attention", "keras", keras_dot)


def window_mask(w: int, sym: bool = False) -> masks.Mask:
    """The window case's rule: query i attends keys i-w..i (w + 1 keys, fewer near the start),
    exactly what ``LocalAttention(window_size=w, causal=True, look_backward=1,
    exact_windowsize=True)`` attends (it blocks key j when i > j + w), so every contender does the
    same work. ``sym``: keys i-w..i+w (2w + 1 keys, fewer near either end), what
    ``LocalAttention(window_size=w, causal=False, look_backward=1, look_forward=1,
    exact_windowsize=True)`` attends (it blocks key j when j - w > i or i > j + w)."""
    return masks.sliding_window(w, w) if sym else masks.causal() & masks.sliding_window(w, 0)


def window_allowed(t: int, w: int, sym: bool = False) -> Tensor:
    """:func:`window_mask` as the dense (T, T) bool matrix (True = may attend) given to SDPA."""
    i = torch.arange(t)
    last = i[:, None] + (w if sym else 0)  # (T, 1): the last key query i attends
    return (i[None, :] <= last) & (i[None, :] >= i[:, None] - w)  # (T, T)


def local_attention(w: int, sym: bool = False):
    """The ``local-attention`` peer doing :func:`window_mask`'s work: blocks of w keys, each query
    sees its block and the one before (``sym``: and the one after), cut to keys i-w..i (i+w)."""
    from local_attention import LocalAttention

    return LocalAttention(
        window_size=w,
        causal=not sym,
        look_backward=1,
        look_forward=1 if sym else 0,
        exact_windowsize=True,
        use_rotary_pos_emb=False,
        autopad=True,
    )


def window(t=16384, w=256, h=8, dh=64, b=1, sym=False) -> Case:
    """Causal sliding window (query i attends keys i-w..i) against dense masked SDPA and local-attention.

    ``sym=True``: the symmetric window of :func:`window_sym` (keys i-w..i+w)."""

    def qkv():
        return _tensors((b, h, t, dh), (b, h, t, dh), (b, h, t, dh))

    def ours():
        q, k, v = qkv()
        mask = window_mask(w, sym)
        return _stepper(lambda: attnkit.attention(q, k, v, mask=mask).output, [q, k, v])

    def dense_sdpa():
        q, k, v = qkv()
        allowed = window_allowed(t, w, sym)  # (T, T)
        return _stepper(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed), [q, k, v])

    def local_attention_pkg():
        q, k, v = qkv()
        la = local_attention(w, sym)
        return _stepper(lambda: la(q, k, v), [q, k, v])

    case = Case(
        "window_sym" if sym else "window",
        {"B": b, "H": h, "T": t, "w": w, "Dh": dh},
        {"attnkit": ours, "dense masked SDPA": dense_sdpa},
    )
    return case.peer("local-attention", "local_attention", local_attention_pkg)


def window_sym(t=8192, w=256, h=8, dh=64, b=1) -> Case:
    """Symmetric sliding window (query i attends keys i-w..i+w) against dense masked SDPA and local-attention."""
    return window(t, w, h, dh, b, sym=True)


def topk(t=4096, k=8, h=8, dh=64, b=1) -> Case:
    """Top-k hard attention: gather the k selected values vs the dense weighted sum."""

    def make(backend):
        def factory():
            q, kk, v = _tensors((b, h, t, dh), (b, h, t, dh), (b, h, t, dh))
            norm = NORMALIZERS["topk"](k=k)
            return _stepper(lambda: attnkit.attention(q, kk, v, normalize=norm, backend=backend).output, [q, kk, v])

        return factory

    return Case(
        "topk",
        {"B": b, "H": h, "T": t, "k": k, "Dh": dh},
        {"attnkit": make("auto"), "dense (reference)": make("reference")},
    )


def sparse(kind: str = "sparsemax", rows=8 * 8 * 512, tk=512) -> Case:
    """A sparse normalizer (sparsemax or entmax15) against the entmax package, on (rows, Tk) scores."""

    def make(fn):
        def factory():
            (s,) = _tensors((rows, tk))
            return _stepper(lambda: fn(s), [s])

        return factory

    def entmax_package(s: Tensor) -> Tensor:
        import entmax

        return getattr(entmax, kind)(s, dim=-1)  # entmax.sparsemax or entmax.entmax15

    case = Case(kind, {"rows": rows, "Tk": tk}, {"attnkit": make(lambda s: NORMALIZERS[kind]()(s).weights)})
    return case.peer(f"entmax.{kind}", "entmax", make(entmax_package))


def entmax15(rows=8 * 8 * 512, tk=512) -> Case:
    """entmax-1.5 against the entmax package, on (rows, Tk) scores (the sparse case)."""
    return sparse("entmax15", rows, tk)


def linear(t=16384, h=8, dh=64, b=1) -> Case:
    """Causal linear attention (elu feature map, O(T)) against causal SDPA (softmax, O(T²))."""

    def qkv():
        return _tensors((b, h, t, dh), (b, h, t, dh), (b, h, t, dh))

    def ours():
        q, k, v = qkv()
        return _stepper(lambda: attnkit.linear_attention(q, k, v, feature_map="elu", causal=True).output, [q, k, v])

    def causal_sdpa():
        q, k, v = qkv()
        return _stepper(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v])

    return Case("linear", {"B": b, "H": h, "T": t, "Dh": dh}, {"attnkit": ours, "causal SDPA": causal_sdpa})


def blocksparse(n=8, t=1024, h=8, dh=64, b=1) -> Case:
    """Packed sequences (a document mask: n sequences of t positions, each attending itself only)
    against dense masked SDPA; attnkit runs it on the block-sparse backend."""

    def qkv():
        return _tensors((b, h, n * t, dh), (b, h, n * t, dh), (b, h, n * t, dh))

    def ours():
        q, k, v = qkv()
        mask = masks.packed([t] * n)
        return _stepper(lambda: attnkit.attention(q, k, v, mask=mask).output, [q, k, v])

    def dense_sdpa():
        q, k, v = qkv()
        allowed = masks.packed([t] * n).materialize((n * t, n * t))  # (T, T)
        return _stepper(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed), [q, k, v])

    return Case(
        "blocksparse",
        {"B": b, "H": h, "T": n * t, "n": n, "Dh": dh},
        {"attnkit": ours, "dense masked SDPA": dense_sdpa},
    )


CASES: dict[str, Callable[..., Case]] = {
    "mha": mha,
    "additive": additive,
    "dot": dot_keras,
    "window": window,
    "window_sym": window_sym,
    "topk": topk,
    "sparsemax": sparse,
    "entmax15": entmax15,
    "linear": linear,
    "blocksparse": blocksparse,
}

# the runs of each case: full sizes, and what --quick keeps
RUNS: dict[str, list[dict[str, int]]] = {
    "mha": [{}],
    "additive": [{}],
    "dot": [{}],
    "window": [{"t": 4096}, {"t": 8192}, {"t": 16384}],
    "window_sym": [{"t": 8192}],
    "topk": [{}],
    "sparsemax": [{}],
    "entmax15": [{}],
    "linear": [{}],
    "blocksparse": [{}],
}
QUICK_RUNS: dict[str, list[dict[str, int]]] = {
    "mha": [{}],
    "additive": [{"b": 2}],
    "dot": [{}],
    "window": [{"t": 4096}],
    "window_sym": [{"t": 4096}],
    "topk": [{}],
    "sparsemax": [{"rows": 8 * 512}],
    "entmax15": [{"rows": 8 * 512}],
    "linear": [{"t": 4096}],
    "blocksparse": [{"n": 4, "t": 512}],
}
