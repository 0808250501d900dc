"""``additive_triton`` against the reference, its kernels run by Triton's interpreter on CPU tensors.

Shape legend: B batch, H heads, Tq / Tk query / key positions, D feature dim, A additive hidden dim.
The interpreter runs the kernels in numpy, slowly, so sizes are tiny but cross every block boundary:
with 16-wide blocks, Tq = 17 and Tk = 33 make 2 query blocks and 3 key blocks with ragged tails, and
A = 20 makes two chunks of hidden units, the second partial. Masks: True = may attend.

The interpreter needs ``TRITON_INTERPRET=1`` before triton is first imported (triton decorates its own
``tl.zeros``, ``tl.sum``, ... on import). So this module sets it on import, when triton is not imported
yet and there is no GPU (on a CPU-only machine nothing else in the session runs triton kernels; with a
GPU, torch.compile's would turn interpreted too). Where that was too late (something imported triton
first, or there is a GPU), the kernel tests skip here and ``test_kernels_in_a_fresh_process`` runs this
file again in a fresh process with the variable set.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import attnkit
from attnkit import SCORES, masks
from attnkit.backends import explain, triton_additive
from attnkit.core.functional import prepare
from additive_grads import run as _run
from tolerances import LOW_PRECISION, LOW_PRECISION_FACTOR, TOLERANCES

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton's first import: see the module docstring

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
BACKEND = "additive_triton"
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _interpreter_problem() -> str | None:
    """Why the kernels cannot run interpreted in this process (None: they can)."""
    if not triton_additive.interpreting():
        return "TRITON_INTERPRET=1 is not set in this process"
    return triton_additive.triton_problem(interpreter=True)


@pytest.fixture
def interpreter():
    """For the tests that run the kernels: skipped without triton, or where only a fresh process can interpret."""
    pytest.importorskip("triton")
    reason = _interpreter_problem()
    if reason is not None:
        pytest.skip(f"{reason}; test_kernels_in_a_fresh_process runs this test")


def _problem(lead=(2,), tq=17, tk=33, d=5, hidden=20, dv=3, heads=None, dtype=F64, seed=0, device="cpu"):
    """q (*lead, Tq, D), k (*lead, Tk, D + 1), value (*lead, Tk, Dv), params with optional (H, ...) dims."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*lead, tq, d, generator=gen, dtype=F64)
    k = torch.randn(*lead, tk, d + 1, generator=gen, dtype=F64)
    value = torch.randn(*lead, tk, dv, generator=gen, dtype=F64)
    torch.manual_seed(seed)
    params = SCORES["additive"].init_params(d, d + 1, hidden, heads=heads, dtype=F64)
    params["v"] = params["v"] * 4  # scores of a few units: weights far from uniform
    q, k, value, *ps = (t.to(device, dtype).requires_grad_() for t in (q, k, value, *params.values()))
    return q, k, value, dict(zip(params, ps))


def _mask(kind, lead, tq, tk):
    if kind == "none":
        return None
    if kind == "padding":  # example b has tk - 7b keys, at least 1
        return masks.padding([max(1, tk - 7 * b) for b in range(lead[0])], max_len=tk)
    if kind == "causal":
        return masks.causal()
    if kind == "causal_padding":  # both in the kernel; offset 5 shifts which key blocks are skipped
        return masks.causal(5) & _mask("padding", lead, tq, tk)
    if kind == "window_padding":  # a band 8 <= j - i <= 11: blocks skipped on both sides, forward and backward
        return masks.sliding_window(2, 1, offset=10) & _mask("padding", lead, tq, tk)
    if kind == "dense_padding":  # an Or has no rule in the kernel: a dense (Tq, Tk) bool, shared by every row
        return (masks.causal(-4) | masks.sliding_window(0, 3)) & _mask("padding", lead, tq, tk)
    if kind == "empty_row":  # dense (B, 1.., Tq, Tk): example 1, query 4 may attend nothing
        allowed = torch.ones(lead[0], *(1 for _ in lead[1:]), tq, tk, dtype=torch.bool)
        allowed[min(1, lead[0] - 1), ..., min(4, tq - 1), :] = False
        return allowed
    raise ValueError(kind)


def _assert_matches_reference(q, k, value, params, **kwargs):
    got = _run(BACKEND, q, k, value, params, **kwargs)
    want = _run("reference", q, k, value, params, **kwargs)
    atol, rtol = TOLERANCES[(BACKEND, q.dtype)]
    names = ["output", "weights", "d query", "d key", "d value", *(f"d {n}" for n in params)]
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None, name
            continue
        assert g.dtype == w.dtype and torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")
    return got


# ---------------------------------------------------------------------------------------------
# equivalence with the reference


MASKS = ["none", "padding", "causal", "causal_padding", "window_padding", "dense_padding", "empty_row"]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("mask", MASKS)
def test_matches_reference(interpreter, dtype, mask):
    q, k, value, params = _problem(dtype=dtype)
    _assert_matches_reference(q, k, value, params, mask=_mask(mask, (2,), 17, 33), need_weights=True)


@pytest.mark.parametrize("mask", ["none", "causal_padding"])
def test_matches_reference_without_weights(interpreter, mask):
    q, k, value, params = _problem(dtype=F32)
    _assert_matches_reference(q, k, value, params, mask=_mask(mask, (2,), 17, 33))


@pytest.mark.parametrize("mask", ["padding", "causal", "empty_row"])
def test_per_head_params(interpreter, mask):
    """Leading dims (B, H) flattened to N rows, per-head W_q (H, Dq, A), W_k (H, Dk, A), v (H, A)."""
    q, k, value, params = _problem(lead=(2, 3), tq=9, tk=18, heads=3, dtype=F32)
    _assert_matches_reference(q, k, value, params, mask=_mask(mask, (2, 3), 9, 18), need_weights=True)


@pytest.mark.parametrize("tq, tk", [(1, 1), (1, 17), (17, 1), (16, 32)], ids=lambda x: str(x))
def test_odd_sizes(interpreter, tq, tk):
    """T = 1, Tq != Tk, and T a multiple of the block size (no ragged tail); key padding leaves example 1 one key."""
    q, k, value, params = _problem(tq=tq, tk=tk, hidden=7)
    _assert_matches_reference(q, k, value, params, mask=masks.padding([tk, 1], max_len=tk), need_weights=True)


@pytest.mark.parametrize("offset", [-3, 20])
def test_causal_offsets(interpreter, offset):
    """Negative: the first queries see nothing (zero rows); large: every key block is in reach."""
    q, k, value, params = _problem()
    _assert_matches_reference(q, k, value, params, mask=masks.causal(offset), need_weights=True)


def test_broadcast_query_and_value(interpreter):
    """A query and a value shared by the batch: a and value reach the kernels as stride-0 views."""
    q, k, value, params = _problem(lead=(3,))
    q1, v1 = (t[0].detach().requires_grad_() for t in (q, value))
    _assert_matches_reference(q1, k, v1, params, mask=masks.padding([33, 4, 1], max_len=33), need_weights=True)


def test_fully_masked_row_gives_zeros_and_zero_grads(interpreter):
    q, k, value, params = _problem()
    got = _assert_matches_reference(q, k, value, params, mask=_mask("empty_row", (2,), 17, 33), need_weights=True)
    out, weights, d_q = got[:3]
    assert (out[1, 4] == 0).all() and (weights[1, 4] == 0).all() and (d_q[1, 4] == 0).all()


def test_all_rows_masked(interpreter):
    q, k, value, params = _problem()
    got = _assert_matches_reference(q, k, value, params, mask=torch.zeros(17, 33, dtype=torch.bool), need_weights=True)
    assert all((g == 0).all() for g in got)


def test_value_gradient_alone(interpreter):
    """Frozen score (q, k, parameters need no gradient): the kernel skips the hidden units' gradients."""
    q, k, value, params = _problem()
    q, k = q.detach(), k.detach()
    params = {n: p.detach() for n, p in params.items()}
    _assert_matches_reference(q, k, value, params, mask=masks.causal())


def test_bfloat16(interpreter):
    """Rounded to bfloat16 at the edges, float32 inside: against the float64 truth, as in test_backends."""
    q, k, value, params = _problem(lead=(2,), tq=9, tk=18, dtype=BF16)
    _assert_bfloat16_close_to_truth(q, k, value, params, mask=_mask("causal_padding", (2,), 9, 18), need_weights=True)


def _assert_bfloat16_close_to_truth(q, k, value, params, **kwargs):
    got = _run(BACKEND, q, k, value, params, **kwargs)
    want = _run("reference", q, k, value, params, **kwargs)
    wide = [t.detach().double().requires_grad_() for t in (q, k, value, *params.values())]
    truth = _run("reference", *wide[:3], dict(zip(params, wide[3:])), **kwargs)
    assert BF16 in LOW_PRECISION
    atol, rtol = TOLERANCES[(BACKEND, BF16)]
    for i, (g, w, t) in enumerate(zip(got, want, truth)):
        assert g.dtype == BF16 and torch.isfinite(g).all(), i
        ours, refs = (g.double() - t).abs().max(), (w.double() - t).abs().max()
        assert ours <= LOW_PRECISION_FACTOR * refs + atol + rtol * t.abs().max(), (i, float(ours), float(refs))


def test_gradcheck(interpreter):
    """float64 finite differences through output and weights, a row with no key included."""
    q, k, value, params = _problem(lead=(1,), tq=3, tk=4, d=2, hidden=3, dv=2)
    mask = torch.tensor([[True, True, False, True], [False] * 4, [True, False, True, True]])

    def fn(q, k, value, w_q, w_k, v):
        res = attnkit.attention(
            q, k, value, score="additive", score_params={"W_q": w_q, "W_k": w_k, "v": v},
            mask=mask, need_weights=True, backend=BACKEND,
        )
        return res.output, res.weights

    assert torch.autograd.gradcheck(fn, (q, k, value, *params.values()))


# ---------------------------------------------------------------------------------------------
# on a GPU, compiled: run wherever CUDA is (the interpreter tests then run in a fresh process)


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("triton")
    reason = triton_additive.triton_problem(interpreter=False)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("dtype", [F64, F32, BF16])
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("need_weights", [False, True])
def test_cuda_matches_reference(cuda, dtype, mask, need_weights):
    """Sizes that span several blocks of every kind: Tq = 100, Tk = 130, A = 72 (5 chunks), Dv = 40, N = 2·4."""
    lead, tq, tk = (2, 4), 100, 130
    q, k, value, params = _problem(lead, tq, tk, d=32, hidden=72, dv=40, heads=4, dtype=dtype, device="cuda")
    kwargs = dict(mask=_mask(mask, lead, tq, tk), need_weights=need_weights)
    if dtype == BF16:
        _assert_bfloat16_close_to_truth(q, k, value, params, **kwargs)
    else:
        _assert_matches_reference(q, k, value, params, **kwargs)
    # opt-in until this test has passed on a GPU: then let triton_additive.worthwhile accept CUDA calls
    reason = explain(q, k, value, score="additive", score_params=params, **kwargs).passed_over[BACKEND]
    assert reason == "not yet validated on GPU hardware; force it with backend='additive_triton'"


def test_cuda_gradients_repeat(cuda):
    """da sums by atomic adds in no fixed order: two runs agree to float32 rounding."""
    q, k, value, params = _problem((2, 4), 100, 130, d=32, hidden=72, dv=40, heads=4, dtype=F32, device="cuda")
    first = _run(BACKEND, q, k, value, params, mask=masks.causal())
    second = _run(BACKEND, q, k, value, params, mask=masks.causal())
    torch.testing.assert_close(first[2], second[2], atol=1e-6, rtol=1e-5)  # d query, through da
    for g, h in zip(first[3:], second[3:]):
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# the interpreter switch, and dispatch


def test_kernels_module_follows_the_interpreter_setting(interpreter, monkeypatch):
    """Our kernels, decorated while TRITON_INTERPRET was unset, are rebuilt interpreted once it is set again."""
    from triton.runtime.interpreter import InterpretedFunction

    from attnkit.backends import _triton_additive_kernels as kernels

    monkeypatch.delenv("TRITON_INTERPRET")
    importlib.reload(kernels)
    assert not kernels.INTERPRETED and not isinstance(kernels.forward_kernel, InterpretedFunction)
    assert "imported with TRITON_INTERPRET=1" in triton_additive.triton_problem(interpreter=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert isinstance(triton_additive._kernels().forward_kernel, InterpretedFunction)
    q, k, value, params = _problem(tq=3, tk=4)
    _assert_matches_reference(q, k, value, params, mask=masks.causal())


def test_kernels_in_a_fresh_process():
    """Where this process cannot interpret (triton imported first, or a GPU), run this file where it can."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if _interpreter_problem() is None:
        pytest.skip("the kernel tests run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    here = "not fresh_process and not compile_for_a_gpu and not import_and_late and not cuda"  # run in this process
    args = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", here]
    res = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and " skipped" not in res.stdout.splitlines()[-1], res.stdout[-2000:]


def test_declines_on_cpu_without_the_interpreter(monkeypatch):
    """Runs without triton installed: on CPU the backend declines, so CPU dispatch is unchanged."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, value, params = _problem(tq=3, tk=4)
    call = prepare(q, k, value, score="additive", score_params=params)
    reason = triton_additive.supports(call)
    assert reason is not None and "CUDA" in reason and "TRITON_INTERPRET=1" in reason
    assert explain(q, k, value, score="additive", score_params=params).passed_over[BACKEND] == reason
    with pytest.raises(attnkit.AttentionError, match="TRITON_INTERPRET"):
        attnkit.attention(q, k, value, score="additive", score_params=params, backend=BACKEND)


def test_auto_dispatch_never_picks_the_interpreter(interpreter):
    q, k, value, params = _problem(tq=3, tk=4)
    assert triton_additive.supports(prepare(q, k, value, score="additive", score_params=params)) is None
    choice = explain(q, k, value, score="additive", score_params=params)
    assert choice.backend != BACKEND and "interpreter" in choice.passed_over[BACKEND]


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(dropout=0.1), "dropout"),
        (dict(normalize="sparsemax"), "softmax only"),
        (dict(window=2, centre=torch.full((2, 3), 1.0)), "Gaussian"),
        (dict(mask=torch.zeros(3, 4)), "float masks"),
        (dict(score="general"), "additive score only"),
    ],
    ids=["dropout", "sparsemax", "local-p", "float-mask", "general"],
)
def test_declines_with_a_reason(kwargs, reason):
    q, k, value, params = _problem(tq=3, tk=4)
    kwargs = {"score": "additive", "score_params": params, **kwargs}
    if kwargs["score"] != "additive":
        kwargs["score_params"] = SCORES[kwargs["score"]].init_params(q.shape[-1], k.shape[-1], dtype=q.dtype)
    assert reason in triton_additive.supports(prepare(q, k, value, **kwargs))
    with pytest.raises(attnkit.AttentionError, match=reason):
        attnkit.attention(q, k, value, backend=BACKEND, **kwargs)


def test_missing_triton_is_a_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton raises ImportError
    q, k, value, params = _problem(tq=3, tk=4)
    call = prepare(q, k, value, score="additive", score_params=params)
    assert "triton is not installed" in triton_additive.supports(call)


def test_import_and_late_interpreter(tmp_path):
    """``import attnkit`` never imports triton (half a second for every CUDA user), and setting
    TRITON_INTERPRET=1 after triton was imported is declined with the reason, not a failure in a kernel."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    code = """if True:
        import os, sys
        os.environ.pop("TRITON_INTERPRET", None)
        import torch, attnkit
        assert "triton" not in sys.modules, "import attnkit imported triton"
        import triton
        os.environ["TRITON_INTERPRET"] = "1"
        from attnkit import SCORES
        from attnkit.core.functional import prepare
        from attnkit.backends import triton_additive
        q = torch.randn(2, 3, 4)
        call = prepare(q, q, q, score="additive", score_params=SCORES["additive"].init_params(4, 4))
        print(triton_additive.supports(call))
    """
    args = [sys.executable, "-c", code]
    res = subprocess.run(args, check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "triton was imported before TRITON_INTERPRET=1 was set" in res.stdout


def test_kernels_compile_for_a_gpu(tmp_path):
    """Compiled down to an sm_90 cubin with triton's own ptxas, no GPU needed: checks the interpreter
    (numpy) does not make, e.g. ``tl.dot``'s block sizes and operand types, in float32 and float64."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    code = """if True:
        import inspect, os
        os.environ.pop("TRITON_INTERPRET", None)
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's warning, keeps its default
        import triton
        import triton.backends
        if "nvidia" not in triton.backends.backends:
            raise SystemExit("no nvidia backend")
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from attnkit.backends import _triton_additive_kernels as kernels
        from attnkit.backends.triton_additive import config

        def compile(kernel, dtype, **constexprs):
            masks = ("valid_ptr", "dense_ptr")
            signature = {
                name: "constexpr" if name in constexprs else "i32" if not name.endswith("_ptr")
                else "*u8" if name in masks else "*" + dtype
                for name in inspect.signature(kernel.fn).parameters
            }
            source = ASTSource(kernel, signature, constexprs)
            triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=config.num_warps))

        blocks = dict(BM=config.block_q, BN=config.block_k, BA=config.block_a, BD=16)
        flags = dict(HAS_LO=True, HAS_HI=True, HAS_VALID=True, HAS_DENSE=True)
        for dtype in ("fp32", "fp64"):
            compile(kernels.forward_kernel, dtype, WRITE_SCORES=True, **blocks, **flags)
            compile(kernels.backward_kernel, dtype, HAS_DW=True, HIDDEN_GRADS=True, **blocks, **flags)
        print("compiled")
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a fresh cache: really compile
    args = [sys.executable, "-c", code]
    res = subprocess.run(args, check=False, capture_output=True, text=True, env=env, timeout=300)
    if "no nvidia backend" in res.stderr:
        pytest.skip("this triton has no NVIDIA backend")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-4000:]
