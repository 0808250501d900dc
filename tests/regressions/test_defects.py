"""Regression tests for the defects that outside checks found (issue 11): silent wrong results in
the normalizers and the recorder, and raw errors where a clear ``AttentionError`` is owed.
Each test failed before its fix."""

import io
import pickle
import re
import threading

import pytest
import torch

import attnkit
from attnkit import NORMALIZERS, AttentionError, masks

SPARSE = ["sparsemax", "entmax15"]
ALL = ["softmax", "sparsemax", "entmax15", "hard", "topk", "sample", "gumbel"]


# 1. sparse normalizers under a mask with large scores: blocked keys must never join the support
@pytest.mark.parametrize("name", SPARSE)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("fraction", [1e-6, 1e-3, 0.1, 0.5, 1.0])
def test_sparse_rows_sum_to_one_at_every_magnitude(name, dtype, fraction):
    big = torch.finfo(dtype).max * fraction
    scores = torch.tensor([[big, big / 2, big / 5, 0.0, 0.0]], dtype=torch.float64).to(dtype)
    allowed = torch.tensor([[True, True, True, False, False]])
    w = NORMALIZERS[name]()(scores, allowed).weights
    assert w.float().sum(-1).item() == pytest.approx(1.0, abs=1e-2)
    assert w[..., 3:].eq(0).all() and (w >= 0).all()


def test_sparsemax_issue_reproducer():
    scores = torch.tensor([[600.0, 300.0, 120.0, 0.0, 0.0]], dtype=torch.bfloat16)
    w = NORMALIZERS["sparsemax"]()(scores, torch.tensor([[1, 1, 1, 0, 0]]).bool()).weights
    assert w.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("name", SPARSE)
def test_sparse_masked_equals_sparse_on_allowed_keys(name):
    """The masked call gives, on its allowed keys, exactly the unmasked map of those keys alone."""
    torch.manual_seed(0)
    scores = torch.randn(4, 7, dtype=torch.float64) * 1e6
    allowed = torch.rand(4, 7) < 0.6
    allowed[:, 0] = True
    w = NORMALIZERS[name]()(scores, allowed).weights
    for r in range(4):
        alone = NORMALIZERS[name]()(scores[r, allowed[r]][None]).weights[0]
        torch.testing.assert_close(w[r, allowed[r]], alone)


# 3. a recorder sees only its own thread's calls
def test_capture_ignores_other_threads():
    model = attnkit.MultiHeadAttention(8, 2).eval()
    mine, theirs = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    started, release = threading.Event(), threading.Event()

    def other():
        started.wait()
        model(theirs)
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    with attnkit.capture(model) as rec:
        started.set()
        release.wait(timeout=60)  # the other thread's call runs while our recorder is open
        model(mine)
    thread.join()
    assert len(rec.calls("")) == 1 and rec[""].shape == (1, 2, 3, 3)


# 4. integer or complex inputs, and mixed dtypes: an AttentionError naming the dtypes
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_floating_inputs_are_refused(dtype, need_weights):
    x = torch.ones(1, 2, 4).to(dtype)
    with pytest.raises(AttentionError, match=f"query has dtype {dtype} but expected a real floating dtype"):
        attnkit.attention(x, x, x, need_weights=need_weights)


@pytest.mark.parametrize("need_weights", [False, True])
def test_mixed_dtypes_are_refused(need_weights):
    q, k = torch.randn(1, 2, 4, dtype=torch.float16), torch.randn(1, 3, 4)
    with pytest.raises(AttentionError, match="key has dtype torch.float32 but expected torch.float16, the dtype of query"):
        attnkit.attention(q, k, k, need_weights=need_weights)
    with pytest.raises(AttentionError, match="value has dtype torch.float64 but expected torch.float32, the dtype of query"):
        attnkit.attention(k, k, k.double(), need_weights=need_weights)
    w = torch.randn(4, 4)
    with pytest.raises(AttentionError, match=r"score_params\['W'\] has dtype torch.float32 but expected torch.float16, the dtype of query"):
        attnkit.attention(q, q, q, score="general", score_params={"W": w}, need_weights=need_weights)


def test_module_parameters_of_another_dtype_are_refused():
    att = attnkit.Attention(4, score="general")  # float32 W
    x = torch.randn(1, 3, 4, dtype=torch.float16)
    with pytest.raises(AttentionError, match="has dtype torch.float32 but expected torch.float16, the dtype of query"):
        att(x)
    mha = attnkit.MultiHeadAttention(4, 2)
    for need_weights in (False, True):
        with pytest.raises(AttentionError, match="query has dtype torch.float16 but expected torch.float32, the dtype"):
            mha(x, need_weights=need_weights)


# raw errors: a NaN row gives NaN in that row only, on every normalizer
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("masked", [False, True])
def test_nan_score_poisons_its_row_only(name, masked):
    torch.manual_seed(0)
    scores = torch.randn(3, 5)
    scores[1, 2] = float("nan")
    allowed = torch.ones(3, 5, dtype=torch.bool) if masked else None
    w = NORMALIZERS[name]()(scores, allowed).weights
    assert torch.isnan(w[1]).all()
    assert torch.isfinite(w[[0, 2]]).all()
    torch.testing.assert_close(w[[0, 2]].sum(-1), torch.ones(2))


@pytest.mark.parametrize("name", ALL)
def test_nan_score_at_a_blocked_key_has_no_effect(name):
    scores = torch.tensor([[1.0, 2.0, float("nan")]])
    allowed = torch.tensor([[True, True, False]])
    w = NORMALIZERS[name]()(scores, allowed).weights
    assert torch.isfinite(w).all() and w[0, 2] == 0 and w.sum().item() == pytest.approx(1.0)


def test_sample_on_overflowing_half_scores_gives_nan_rows_not_an_error():
    scores = torch.tensor([[7e4, 1.0], [1.0, 2.0]]).half()  # 7e4 is inf in float16
    result = NORMALIZERS["sample"]()(scores)
    assert torch.isnan(result.weights[0]).all() and torch.isnan(result.log_prob[0])
    assert result.weights[1].sum().item() == 1.0 and torch.isfinite(result.log_prob[1])


def test_nan_row_gradient_stays_in_its_row():
    for name in SPARSE:
        scores = torch.randn(3, 5, dtype=torch.float64)
        scores[1, 0] = float("nan")
        scores.requires_grad_(True)
        NORMALIZERS[name]()(scores).weights[[0, 2]].pow(2).sum().backward()
        assert torch.isfinite(scores.grad[[0, 2]]).all()


# empty dims: an empty or zero result, not a crash
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("tq,tk", [(0, 5), (3, 0), (0, 0)])
@pytest.mark.parametrize("need_weights", [False, True])
def test_empty_dims(name, tq, tk, need_weights):
    q, k, v = torch.randn(2, tq, 8), torch.randn(2, tk, 8), torch.randn(2, tk, 4)
    out, w = attnkit.attention(q, k, v, normalize=name, need_weights=need_weights, mask=masks.causal())
    assert out.shape == (2, tq, 4) and out.eq(0).all()
    if need_weights:
        assert w.shape == (2, tq, tk)


@pytest.mark.parametrize("shape", [(2, 0, 4, 8), (2, 3, 0, 8), (0, 3, 4, 8)])
def test_hierarchical_attention_with_no_sentence_or_word(shape):
    result = attnkit.HierarchicalAttention(8)(torch.randn(*shape))
    assert result.document.shape == (shape[0], 8) and result.document.eq(0).all()
    assert result.word_weights.shape == shape[:3] and result.sentence_weights.shape == shape[:2]


def test_han_model_with_no_document():
    from attnkit.models.han import HAN, HANConfig

    model = HAN(HANConfig(vocab=20, classes=3, embed_dim=8, hidden_dim=4)).eval()
    assert model(torch.randint(1, 20, (0, 2, 3))).logits.shape == (0, 3)


# masks and constructor arguments
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_float_mask_with_inf_or_nan_is_refused(bad):
    x = torch.randn(1, 2, 4)
    with pytest.raises(AttentionError, match="float mask holds NaN or \\+inf"):
        attnkit.attention(x, x, x, mask=torch.tensor([[0.0, bad]]))


def test_float_mask_minus_inf_still_blocks():
    x = torch.randn(1, 2, 4)
    _, w = attnkit.attention(x, x, x, mask=torch.tensor([[0.0, float("-inf")]]), need_weights=True)
    assert w[..., 1].eq(0).all()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: attnkit.MultiHeadAttention(-8, 2), "embed_dim must be an int in 1..2**62, got -8"),
        (lambda: attnkit.MultiHeadAttention(8.0, 2), "embed_dim must be an int in 1..2**62, got 8.0 (float)"),
        (lambda: attnkit.MultiHeadAttention(8, 0), "num_heads must be an int in 1..2**62, got 0"),
        (lambda: attnkit.AttentionPooling(8, num_queries=2.5), "num_queries must be an int in 1..2**62, got 2.5"),
        (lambda: attnkit.AttentionPooling(-1), "input_dim must be an int in 1..2**62, got -1"),
        (lambda: attnkit.Attention(4, -2), "key_dim must be an int in 1..2**62, got -2"),
        (lambda: attnkit.Attention(4, dropout="0.1"), "dropout must be a number in [0, 1), got '0.1'"),
        (lambda: attnkit.Attention(4, dropout=float("nan")), "dropout must be a number in [0, 1), got nan"),
        (lambda: attnkit.Attention(4, region="local-p", window=2.5), "must be an int in 1..2**62, got 2.5"),
        (lambda: attnkit.HierarchicalAttention(True), "word_dim must be an int in 1..2**62, got True"),
        (lambda: masks.causal("a"), "causal offset must be an int in -2**62..2**62, got 'a' (str)"),
        (lambda: masks.sliding_window(10**30), "window left size must be an int in 0..2**62"),
        (lambda: masks.sliding_window(2, 1.5), "window right size must be an int in 0..2**62, got 1.5"),
        (lambda: masks.padding([3, 2], max_len=-1), "max_len must be an int in 0..2**62, got -1"),
        (lambda: masks.block_sparse(torch.ones(2, 2, dtype=torch.bool), 0), "block must be an int in 1"),
    ],
)
def test_bad_constructor_arguments(make, message):
    with pytest.raises(AttentionError, match=re.escape(message)):
        make()


def test_window_of_huge_size_and_nan_centre():
    q, k = torch.randn(1, 2, 4), torch.randn(1, 6, 4)
    with pytest.raises(AttentionError, match="window left size"):
        attnkit.attention(q, k, k, window=10**30)
    with pytest.raises(AttentionError, match="centre \\(local-p\\) holds NaN or inf"):
        attnkit.attention(q, k, k, window=1, centre=torch.tensor([[0.0, float("nan")]]))


# modules with score parameters pickle and torch.save whole
@pytest.mark.parametrize(
    "make",
    [
        lambda: attnkit.AttentionPooling(8),
        lambda: attnkit.HierarchicalAttention(8),
        lambda: attnkit.MultiHeadAttention(8, 2, score=["general", "additive"]),
        lambda: attnkit.Attention(8, score="cosine"),
        lambda: attnkit.Attention(8, 6, score="concat"),
    ],
)
def test_modules_pickle_and_save_whole(make):
    torch.manual_seed(0)
    module = make().eval()
    x = torch.randn(2, 3, 8) if not isinstance(module, attnkit.HierarchicalAttention) else torch.randn(2, 2, 3, 8)
    args = (x, torch.randn(2, 4, 6)) if getattr(module, "key_dim", 8) == 6 else (x,)
    want = module(*args)[0]
    restored = pickle.loads(pickle.dumps(module))
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for copy in (restored, loaded):
        assert torch.equal(copy(*args)[0], want)


# a NaN query row: NaN in that output row only, on every backend that takes the call (flex forced)
@pytest.mark.parametrize("normalize", ["softmax", "sparsemax", "entmax15", "hard", "topk"])
@pytest.mark.parametrize("window", [None, (2, 0)])
def test_nan_query_row_is_nan_in_its_row_only_on_every_backend(normalize, window):
    from attnkit.backends import BACKENDS
    from attnkit.core.functional import prepare

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8)
    q[0, 0, 5, 0] = float("nan")
    call = prepare(q, k, v, normalize=normalize, window=window)
    ran = []
    for name, backend in BACKENDS.items():
        if backend.reason(call, forced=True) is None:
            out = backend.run(call).output
            assert torch.isnan(out[0, 0, 5]).all(), name
            nan_rows = torch.isnan(out).any(-1)
            nan_rows[0, 0, 5] = False
            assert not nan_rows.any(), name
            ran.append(name)
    assert "reference" in ran
