"""``additive_fused`` against the reference: outputs, weights and gradients over dtype × mask × shape.

Shape legend: B batch, H heads, Tq / Tk query / key positions, D feature dim, A additive hidden dim.
Most tests run the eager tiles with tiny tile sizes, so that every shape spans several row, query and
key tiles (the online softmax walks several key tiles, tails are padded); one small test runs the
compiled kernels, two more check compilation's guards with stub kernels. Masks: True = may attend.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import attnkit
from attnkit import SCORES, masks
from attnkit.backends import additive, explain
from attnkit.core.functional import prepare

import tolerances
from additive_grads import run as _run

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16

# dtype -> (atol, rtol) of the fused path against the reference, from the one table (tolerances.py).
# bfloat16 is compared against the float64 truth instead: the fused path computes in float32, so its
# error may be at most BF16_FACTOR times the bfloat16 reference's own, plus atol.
TOLERANCES = {dtype: tolerances.TOLERANCES[("additive_fused", dtype)] for dtype in (F64, F32, BF16)}
BF16_FACTOR = tolerances.LOW_PRECISION_FACTOR

MASKS = ["none", "padding", "causal", "window", "float", "empty_row"]

# tiny tiles: with A = 8, 3 keys and 2 queries per tile, one batch row per tile
SMALL_TILES = {"compile": "never", "eager_tile": 48, "key_tile": 24}
# whole rows: every query and key in one tile, several batch rows per tile (N padded to whole tiles)
ROW_TILES = {"compile": "never", "eager_tile": 4096, "key_tile": 1 << 17}


@pytest.fixture(autouse=True)
def tiles(monkeypatch, tmp_path):
    """Eager tiny tiles unless a test asks otherwise; compilation state reset after each test, and
    compiled kernels kept in a fresh cache folder."""
    for name, value in SMALL_TILES.items():
        monkeypatch.setattr(additive.config, name, value)
    monkeypatch.setattr(additive.compile, "_compile_failed", False)
    monkeypatch.setattr(additive.compile, "_building", {})
    monkeypatch.setattr(additive.compile, "_loaded", {})
    monkeypatch.setattr(additive.compile, "_calls", {})
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))


def _configure(monkeypatch, **options):
    for name, value in options.items():
        monkeypatch.setattr(additive.config, name, value)


def _problem(lead=(2,), tq=7, tk=11, d=5, hidden=8, heads=None, dtype=F64, scale=1.0, seed=0):
    """q (*lead, Tq, D), k (*lead, Tk, D + 1), value (*lead, Tk, 3), params with optional (H, ...) dims."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*lead, tq, d, generator=gen, dtype=F64) * scale
    k = torch.randn(*lead, tk, d + 1, generator=gen, dtype=F64) * scale
    value = torch.randn(*lead, tk, 3, generator=gen, dtype=F64)
    torch.manual_seed(seed)
    params = SCORES["additive"].init_params(d, d + 1, hidden, heads=heads, dtype=F64)
    params["v"] = params["v"] * 4  # scores of a few units: weights far from uniform
    tensors = [q, k, value, *params.values()]
    q, k, value, *ps = (t.to(dtype).requires_grad_() for t in tensors)
    return q, k, value, dict(zip(params, ps))


def _mask(kind, lead, tq, tk, dtype=F64):
    if kind == "none":
        return None
    if kind == "padding":  # example b has tk - 3b keys, at least 1
        return masks.padding([max(1, tk - 3 * b) for b in range(lead[0])], max_len=tk)
    if kind == "causal":
        return masks.causal()
    if kind == "window":
        return masks.sliding_window(2, 1)
    if kind == "float":  # biases, -inf = blocked
        bias = torch.randn(tq, tk, generator=torch.Generator().manual_seed(3), dtype=F64)
        return bias.masked_fill(bias > 1.0, -math.inf).to(dtype)
    if kind == "empty_row":  # query 1 may attend nothing
        allowed = torch.ones(tq, tk, dtype=torch.bool)
        allowed[min(1, tq - 1)] = False
        return allowed
    raise ValueError(kind)


def _assert_matches_reference(q, k, value, params, **kwargs):
    got = _run("additive_fused", q, k, value, params, **kwargs)
    want = _run("reference", q, k, value, params, **kwargs)
    atol, rtol = TOLERANCES[q.dtype]
    names = ["output", "weights", "d query", "d key", "d value", *(f"d {n}" for n in params)]
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None, name
            continue
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")
    return got


# ---------------------------------------------------------------------------------------------
# equivalence with the reference


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("need_weights", [False, True])
def test_matches_reference_batch(dtype, mask, need_weights):
    q, k, value, params = _problem(lead=(3,), dtype=dtype)
    _assert_matches_reference(q, k, value, params, mask=_mask(mask, (3,), 7, 11, dtype), need_weights=need_weights)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("mask", MASKS)
def test_matches_reference_per_head_params(dtype, mask):
    """Leading dims (B, H) with per-head W_q (H, Dq, A), W_k (H, Dk, A), v (H, A)."""
    q, k, value, params = _problem(lead=(2, 3), heads=3, dtype=dtype)
    _assert_matches_reference(q, k, value, params, mask=_mask(mask, (2, 3), 7, 11, dtype), need_weights=True)


@pytest.mark.parametrize("tiles", ["small", "rows"])
@pytest.mark.parametrize("tq, tk", [(1, 1), (1, 9), (9, 1), (5, 17), (33, 7), (16, 16)], ids=lambda x: str(x))
def test_odd_sizes(monkeypatch, tiles, tq, tk):
    """Tq != Tk, T = 1, T not a multiple of the tile; whole-row tiles pad the batch rows (N = 5)."""
    _configure(monkeypatch, **(SMALL_TILES if tiles == "small" else ROW_TILES))
    q, k, value, params = _problem(lead=(5,), tq=tq, tk=tk, dtype=F64)
    _assert_matches_reference(q, k, value, params, mask=_mask("padding", (5,), tq, tk), need_weights=True)


def test_tile_plan_walks_several_key_tiles():
    """The small tiles really exercise the online softmax: several key tiles and query tiles per row."""
    tile, padded = additive._plan(3, 7, 11, 8, compiled=False)
    assert tile == (1, 2, 3) and padded == (3, 8, 12)


def test_broadcast_query_and_value():
    """A query shared by the batch, (Tq, D), against keys (B, Tk, D); one value shared too."""
    q, k, value, params = _problem(lead=(3,))
    q1 = q[0].detach().requires_grad_()
    v1 = value[0].detach().requires_grad_()
    _assert_matches_reference(q1, k, v1, params, mask=masks.padding([11, 4, 1], max_len=11), need_weights=True)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_saturated_units_take_the_per_unit_formula(dtype):
    """|a|, |b| beyond FACTORED_LIMIT (e^(-2a) would overflow): r = sigmoid(2(a + b)), still the reference."""
    q, k, value, params = _problem(dtype=dtype, scale=300.0 if dtype == F64 else 60.0)
    a = (q @ params["W_q"]).abs().max()
    assert a > additive.FACTORED_LIMIT[dtype]
    _assert_matches_reference(q, k, value, params, mask=masks.causal(), need_weights=True)


def test_float_mask_that_requires_grad():
    """A learnable additive bias (e.g. a position bias) gets the reference's gradient."""
    q, k, value, params = _problem()
    bias = torch.randn(7, 11, dtype=F64).masked_fill(torch.eye(7, 11, dtype=torch.bool), -math.inf)
    grads = []
    for backend in ("additive_fused", "reference"):
        b = bias.clone().requires_grad_()
        out = attnkit.attention(q, k, value, score="additive", score_params=params, mask=b, backend=backend)[0]
        out.sum().backward()
        grads.append(b.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-10)
    assert (grads[0][torch.eye(7, 11, dtype=torch.bool)] == 0).all()


def test_value_gradient_alone():
    """Frozen score (q, k and parameters need no gradient): only d value, the tiles' grads pass skipped."""
    q, k, value, params = _problem()
    q, k = q.detach(), k.detach()
    params = {n: p.detach() for n, p in params.items()}
    grads = []
    for backend in ("additive_fused", "reference"):
        value.grad = None
        out = attnkit.attention(
            q, k, value, score="additive", score_params=params, mask=masks.causal(), backend=backend
        )
        (out[0] * torch.linspace(-1, 1, 3, dtype=F64)).sum().backward()
        grads.append(value.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-10)


def test_bfloat16_forward():
    q, k, value, params = _problem(lead=(2, 3), heads=3, dtype=BF16)
    mask = masks.padding([11, 6], max_len=11)
    kw = {"score": "additive", "mask": mask, "need_weights": True}
    got = attnkit.attention(q, k, value, score_params=params, backend="additive_fused", **kw)
    want = attnkit.attention(q, k, value, score_params=params, backend="reference", **kw)
    wide = {n: p.detach().double() for n, p in params.items()}
    truth = attnkit.attention(q.double(), k.double(), value.double(), score_params=wide, backend="reference", **kw)
    atol, _ = TOLERANCES[BF16]
    for g, w, t in zip(got, want, truth):
        assert g.dtype == BF16
        ours, refs = (g.double() - t).abs().max(), (w.double() - t).abs().max()
        assert ours <= BF16_FACTOR * refs + atol, (ours, refs)


# ---------------------------------------------------------------------------------------------
# gradients against finite differences


@pytest.mark.parametrize("factored", [True, False])
def test_gradcheck(monkeypatch, factored):
    """float64 gradcheck through output and weights; both forms of r (e^(-2a)e^(-2b), sigmoid(2(a+b)))."""
    if not factored:
        monkeypatch.setattr(additive.kernels, "FACTORED_LIMIT", {F32: 0.0, F64: 0.0})
    q, k, value, params = _problem(lead=(2,), tq=3, tk=4, d=2, hidden=4)
    mask = torch.tensor([[True, True, False, True], [False] * 4, [True, False, True, True]])

    def fn(q, k, value, w_q, w_k, v):
        res = attnkit.attention(
            q,
            k,
            value,
            score="additive",
            score_params={"W_q": w_q, "W_k": w_k, "v": v},
            mask=mask,
            need_weights=True,
            backend="additive_fused",
        )
        return res.output, res.weights

    assert torch.autograd.gradcheck(fn, (q, k, value, *params.values()))


def test_fully_masked_row_gives_zeros_and_finite_grads():
    q, k, value, params = _problem(lead=(2,))
    allowed = torch.ones(2, 7, 11, dtype=torch.bool)
    allowed[1, 3] = False  # example 1, query 3: no key
    got = _assert_matches_reference(q, k, value, params, mask=allowed, need_weights=True)
    out, weights, d_q = got[:3]
    assert (out[1, 3] == 0).all() and (weights[1, 3] == 0).all()
    assert (d_q[1, 3] == 0).all()


def test_all_rows_masked():
    q, k, value, params = _problem(lead=(2,))
    got = _assert_matches_reference(q, k, value, params, mask=torch.zeros(7, 11, dtype=torch.bool), need_weights=True)
    assert all((g == 0).all() for g in got[:2])


# ---------------------------------------------------------------------------------------------
# memory: the (B, Tq, Tk, A) tensor is never formed


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for the backward while ``fn`` runs."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_saves_no_hidden_tensor():
    b, t, d, hidden = 2, 64, 16, 64
    q, k, value, params = _problem(lead=(b,), tq=t, tk=t, d=d, hidden=hidden, dtype=F32)
    big = b * t * t * hidden * 4  # bytes of the (B, Tq, Tk, A) hidden tensor
    kwargs = {"score": "additive", "score_params": params, "mask": masks.causal(), "need_weights": True}
    ours = _saved_bytes(lambda: attnkit.attention(q, k, value, backend="additive_fused", **kwargs))
    reference = _saved_bytes(lambda: attnkit.attention(q, k, value, backend="reference", **kwargs))
    assert reference >= big  # the measure sees the hidden tensor where there is one
    # a and b (B·T·A each) dominate; then the weights and the mask (B·T·T), q, k, value, output, ...
    assert ours < big / 8


class _LargestTensor(TorchDispatchMode):
    """Records the largest storage any aten op returns, forward and backward."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def test_largest_tensor_is_far_below_the_hidden_tensor(monkeypatch):
    """No op forward or backward returns anything near (B, Tq, Tk, A); the reference's does."""
    _configure(monkeypatch, eager_tile=4096)
    b, t, d, hidden = 2, 64, 16, 64
    q, k, value, params = _problem(lead=(b,), tq=t, tk=t, d=d, hidden=hidden, dtype=F32)
    big = b * t * t * hidden * 4
    largest = {}
    for backend in ("additive_fused", "reference"):
        with _LargestTensor() as seen:
            out = attnkit.attention(q, k, value, score="additive", score_params=params, backend=backend)[0]
            out.sum().backward()
        largest[backend] = seen.largest
    assert largest["reference"] >= big
    assert largest["additive_fused"] <= big / 16  # a, b (B·T·A) and one 4096-unit tile are the largest


# ---------------------------------------------------------------------------------------------
# dispatch


def _dispatch_problem():
    """2·64·64·32 = 2^18 hidden units: above config.min_work, where the fused path pays."""
    q, k, value, params = _problem(lead=(2,), tq=64, tk=64, hidden=32, dtype=F32)
    return (q, k, value), params


def test_dispatch_picks_fused_for_additive_softmax():
    qkv, params = _dispatch_problem()
    assert explain(*qkv, score="additive", score_params=params).backend == "additive_fused"
    choice = explain(*qkv, score="additive", score_params=params, mask=masks.causal(), need_weights=True)
    assert choice.backend == "additive_fused"


def test_dispatch_keeps_tiny_calls_on_the_reference():
    q, k, value, params = _problem(lead=(2,), tq=4, tk=4, dtype=F32)
    choice = explain(q, k, value, score="additive", score_params=params)
    assert choice.backend == "reference"
    assert "the reference is as fast" in choice.passed_over["additive_fused"]


def test_dispatch_falls_back_with_dropout():
    qkv, params = _dispatch_problem()
    choice = explain(*qkv, score="additive", score_params=params, dropout=0.1)
    assert choice.backend == "reference"
    assert "dropout" in choice.passed_over["additive_fused"]


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"normalize": "sparsemax"}, "softmax only"),
        ({"window": 2, "centre": torch.full((2, 64), 5.0)}, "Gaussian"),
        ({"score": "concat"}, "additive score only"),
        ({"score": "general"}, "additive score only"),
        ({"dropout": 0.1}, "dropout"),
    ],
    ids=["sparsemax", "local-p", "concat", "general", "dropout"],
)
def test_fused_declines_with_a_reason(kwargs, reason):
    """Other normalizers, local-p, dropout and other scores (concat's wᵀ[q; k] is cheap already) go elsewhere."""
    (q, k, value), params = _dispatch_problem()
    kwargs = {"score": "additive", "score_params": params, **kwargs}
    if kwargs["score"] != "additive":
        kwargs["score_params"] = SCORES[kwargs["score"]].init_params(q.shape[-1], k.shape[-1])
    assert reason in additive.supports(prepare(q, k, value, **kwargs))
    assert explain(q, k, value, **kwargs).backend != "additive_fused"


def test_forcing_an_unsupported_call_raises():
    qkv, params = _dispatch_problem()
    with pytest.raises(attnkit.AttentionError, match="dropout"):
        attnkit.attention(*qkv, score="additive", score_params=params, dropout=0.5, backend="additive_fused")
    with pytest.raises(attnkit.AttentionError, match="has dtype torch.float64 but expected torch.float32"):
        wide = {n: p.double() for n, p in params.items()}
        attnkit.attention(*qkv, score="additive", score_params=wide, backend="additive_fused")


# ---------------------------------------------------------------------------------------------
# compiled tiles


def _has_cxx() -> bool:
    return bool(os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++"))


@pytest.mark.skipif(not _has_cxx(), reason="AOTInductor on CPU needs a C++ compiler")
def test_compiled_tiles_match_reference_and_compile_once(monkeypatch):
    """Tiles of 16 queries × 16 keys (Tk = 37: three key tiles, padded), built by AOTInductor in a
    separate process ("always" waits for it); a second call builds nothing, nor does a new process."""
    _configure(monkeypatch, compile="always", compiled_tile=16 * 16 * 8 * 2, key_tile=16 * 8)
    q, k, value, params = _problem(lead=(2,), tq=20, tk=37, dtype=F32)
    mask = masks.padding([37, 30], max_len=37)
    _assert_matches_reference(q, k, value, params, mask=mask, need_weights=True)
    assert not additive._compile_failed
    assert len(additive._loaded) == 1 and not additive._building

    def no_build(*args):
        raise AssertionError("built again")

    monkeypatch.setattr(additive.compile, "_start_build", no_build)
    _assert_matches_reference(q, k, value, params, mask=mask, need_weights=True)
    monkeypatch.setattr(additive.compile, "_loaded", {})  # a new process: loads the packages from the cache
    _assert_matches_reference(q, k, value, params, mask=mask, need_weights=True)
    assert len(additive._loaded) == 1 and not additive._compile_failed


class _FinishedBuild:
    """A stand-in for the build process: done at once, having written the packages."""

    returncode = 0

    def __init__(self, kernel_key, paths):
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("stub")

    def poll(self):
        return 0

    def wait(self):
        return 0


def test_auto_builds_a_tile_shape_in_the_background_from_its_second_call(monkeypatch):
    """``compile="auto"`` runs a shape's first call eagerly and starts the build on its second; calls use
    the kernels once built, and a process that finds them built uses them from its first call (build and
    kernels stubbed: no compiler run here)."""
    used, builds = [], []

    def stub(kernel):
        def call(*args):
            used.append(kernel.__name__)
            return kernel(*args)

        return call

    def start(kernel_key, paths):
        builds.append(kernel_key)
        return _FinishedBuild(kernel_key, paths)

    _configure(monkeypatch, compile="auto", compile_min_work=0, compile_after=2)
    monkeypatch.setattr(additive.compile, "_start_build", start)
    monkeypatch.setattr(
        additive.compile, "_load_kernels", lambda paths: (stub(additive._scores_eager), stub(additive._grads_eager))
    )
    q, k, value, params = _problem(dtype=F32)
    for call in range(3):
        used.clear()
        _assert_matches_reference(q, k, value, params, mask=masks.causal())
        assert bool(used) == (call >= 1), call
    assert len(builds) == 1 and len(additive._loaded) == 1
    monkeypatch.setattr(additive.compile, "_loaded", {})
    monkeypatch.setattr(additive.compile, "_calls", {})
    used.clear()
    _assert_matches_reference(q, k, value, params, mask=masks.causal())
    assert used and len(builds) == 1


def test_a_build_that_is_not_done_leaves_the_call_eager(monkeypatch):
    class Running(_FinishedBuild):
        def __init__(self, kernel_key, paths):  # writes nothing yet
            pass

        def poll(self):
            return None

    _configure(monkeypatch, compile="auto", compile_min_work=0, compile_after=1)
    monkeypatch.setattr(additive.compile, "_start_build", Running)
    q, k, value, params = _problem(dtype=F32)
    for _ in range(2):
        _assert_matches_reference(q, k, value, params, mask=masks.causal(), need_weights=True)
    assert len(additive._building) == 1 and not additive._loaded and not additive._compile_failed


def test_compile_failure_falls_back_to_eager_tiles(monkeypatch):
    def broken(kernel_key, paths):
        log = tempfile.TemporaryFile("w+")  # noqa: SIM115  closed with the build
        build = subprocess.Popen([sys.executable, "-c", "raise SystemExit('no compiler here')"], stderr=log)
        build.log = log
        return build

    _configure(monkeypatch, compile="always")
    monkeypatch.setattr(additive.compile, "_start_build", broken)
    q, k, value, params = _problem(dtype=F32)
    _assert_matches_reference(q, k, value, params, mask=masks.causal(), need_weights=True)
    assert additive._compile_failed
    _assert_matches_reference(q, k, value, params, mask=masks.causal(), need_weights=True)


# ---------------------------------------------------------------------------------------------
# the walk over the tiles: workers of one thread each


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("mask", ["padding", "float", "empty_row"])
def test_workers_match_reference(monkeypatch, workers, mask):
    """Any number of workers, each taking whole blocks: outputs, weights and every gradient as the
    reference (the float mask's own gradient included); tiny tiles, so each worker takes many blocks."""
    _configure(monkeypatch, workers=workers)
    q, k, value, params = _problem(lead=(3,), dtype=F64)
    _assert_matches_reference(q, k, value, params, mask=_mask(mask, (3,), 7, 11), need_weights=True)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_call_leaves_the_callers_thread_count(monkeypatch, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _configure(monkeypatch, workers=0)  # as many workers as the caller's threads
        q, k, value, params = _problem(dtype=F32)
        _assert_matches_reference(q, k, value, params, mask=masks.causal())
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_a_failing_block_raises_in_the_caller(monkeypatch):
    _configure(monkeypatch, workers=2)

    def broken(*args):
        raise RuntimeError("tile failed")

    monkeypatch.setattr(additive.kernels, "_scores_eager", broken)
    q, k, value, params = _problem(dtype=F32)
    with pytest.raises(RuntimeError, match="tile failed"):
        attnkit.attention(q, k, value, score="additive", score_params=params, backend="additive_fused")
