"""``LinearAttention``: the functional linear attention on its head projections, in float64;
step-by-step decoding with a ``LinearState`` equals one causal call; the Performer's projection
saves and moves with the module; bad options and states raise.

Shape legend: B batch, H heads, T positions, D model dim, Dh head dim.
"""

import itertools

import pytest
import torch

import attnkit
from attnkit import AttentionError, LinearAttention, LinearState, linear_attention, masks
from attnkit.core.linear import Performer

F64 = torch.float64
B, T, D, NH = 2, 9, 16, 4


def make(feature_map="elu", causal=True, **kwargs):
    torch.manual_seed(0)
    return LinearAttention(D, NH, feature_map=feature_map, causal=causal, **kwargs).double().eval()


def x_of(t=T, seed=0):
    return torch.randn(B, t, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def by_hand(la, x, key_padding=None):
    """The module's maths written out: project, split heads, linear_attention, merge, project."""

    def heads(p):
        return p(x).view(B, -1, NH, D // NH).transpose(1, 2)  # (B, H, T, Dh)

    out, w = linear_attention(
        heads(la.q_proj),
        heads(la.k_proj),
        heads(la.v_proj),
        feature_map=la.feature_map,
        causal=la.causal,
        key_padding=key_padding,
        need_weights=True,
    )
    return la.out_proj(out.transpose(1, 2).reshape(B, -1, D)), w


@pytest.mark.parametrize("feature_map", ["elu", "relu", "performer"])
@pytest.mark.parametrize("causal", [False, True])
def test_module_is_linear_attention_on_its_projections(feature_map, causal):
    la = make(feature_map, causal)
    x, valid = x_of(), masks.padding(torch.tensor([T, 6]), T).valid
    want, want_w = by_hand(la, x, valid)
    out, w = la(x, key_padding=valid, need_weights=True)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w, want_w.mean(1), rtol=1e-10, atol=1e-12)  # averaged over heads
    per_head = la(x, key_padding=valid, need_weights=True, average_weights=False).weights
    torch.testing.assert_close(per_head, want_w, rtol=1e-10, atol=1e-12)
    sums = per_head.sum(-1)  # 1, or 0 for a relu query whose features meet no key's
    one = (sums - 1).abs() < 1e-12
    assert (one | sums.eq(0)).all() if feature_map == "relu" else one.all()
    assert la(x).weights is None


@pytest.mark.parametrize("feature_map", ["elu", "relu", "performer"])
@pytest.mark.parametrize("steps", [[1] * T, [2, 3, 1, 3]], ids=["one-by-one", "chunks"])
def test_recurrent_decoding_equals_the_full_causal_call(feature_map, steps):
    la = make(feature_map, nb_features=32 if feature_map == "performer" else None)
    x = x_of()
    full = la(x).output
    state, t = LinearState(), 0
    for n in steps:
        out = la(x[:, t : t + n], state).output
        torch.testing.assert_close(out, full[:, t : t + n], rtol=1e-10, atol=1e-12)
        t += n
        assert state.length == t
    m = 32 if feature_map == "performer" else D // NH
    assert state.s.shape == (B, NH, m, D // NH) and state.z.shape == (B, NH, m)  # O(1) in T


def test_recurrent_performer_rescales_its_sums_when_the_key_max_grows():
    """Later keys of far larger norm raise the running max of the key exponents: the sums of the
    earlier steps are rescaled to it, and the steps still equal the full call (whose keys share
    one global max)."""
    la = make("performer", nb_features=32)
    x = x_of()
    x[:, 5:] *= 6
    full = la(x).output
    state = LinearState()
    shifts = []
    for t in range(T):
        out = la(x[:, t : t + 1], state).output
        torch.testing.assert_close(out, full[:, t : t + 1], rtol=1e-9, atol=1e-10)
        shifts.append(state.shift.clone())
    assert all(a.le(b).all() for a, b in itertools.pairwise(shifts)) and shifts[-1].gt(shifts[4]).any()


def test_recurrent_decoding_with_key_padding_per_call():
    la = make()
    x = x_of()
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :3] = False  # example 1 is left-padded
    full = la(x, key_padding=valid).output
    state = LinearState()
    steps = [la(x[:, t : t + 1], state, key_padding=valid[:, t : t + 1]).output for t in range(T)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-12)


def test_performer_projection_is_a_buffer_that_saves_and_moves():
    la = make("performer", nb_features=24)
    assert isinstance(la.feature_map, Performer) and la.feature_map.projection.shape == (24, D // NH)
    assert la.feature_map.projection.dtype == F64  # moved by .double()
    assert "feature_map.projection" in la.state_dict()
    other = make("performer", nb_features=24)
    other.feature_map.redraw(seed=7)
    x = x_of()
    assert not torch.allclose(other(x).output, la(x).output)
    other.load_state_dict(la.state_dict())
    torch.testing.assert_close(other(x).output, la(x).output, rtol=0, atol=0)


def test_a_feature_map_object_is_used_as_given():
    fm = Performer(D // NH, 8, seed=2)
    la = make(fm)
    assert la.feature_map is fm
    want, _ = by_hand(la, x_of())
    torch.testing.assert_close(la(x_of()).output, want, rtol=1e-10, atol=1e-12)


def test_bad_options_and_states_raise():
    with pytest.raises(AttentionError, match="num_heads=3 must divide embed_dim=16"):
        LinearAttention(16, 3)
    with pytest.raises(AttentionError, match="nb_features=64 applies to feature_map='performer' only"):
        LinearAttention(16, 4, feature_map="elu", nb_features=64)
    with pytest.raises(AttentionError, match="feature_map='softmax' is unknown"):
        LinearAttention(16, 4, feature_map="softmax")
    with pytest.raises(AttentionError, match=r"takes inputs of 8 features, but expected the head dim Dh .* = 4"):
        LinearAttention(16, 4, feature_map=Performer(8, 16))
    with pytest.raises(AttentionError, match="causal must be a bool"):
        LinearAttention(16, 4, causal=1)
    la, x = make(), x_of()
    with pytest.raises(AttentionError, match="state must be an attnkit.modules.LinearState, got KVCache"):
        la(x, attnkit.KVCache())
    with pytest.raises(AttentionError, match="state= decodes step by step, which needs a causal module"):
        make(causal=False)(x, LinearState())
    with pytest.raises(AttentionError, match="need_weights=True cannot be given with state="):
        la(x, LinearState(), need_weights=True)
    state = LinearState()
    la(x, state)
    with pytest.raises(AttentionError, match=r"state holds sums s \(2, 4, 4, 4\).*a LinearState serves one module"):
        la(x[:1], state)
    with pytest.raises(AttentionError, match=r"x has shape \(2, 9, 8\) but expected \(B, T, 16\)"):
        la(x[..., :8])
    with pytest.raises(AttentionError, match=r"x has dtype torch.float32 but expected torch.float64"):
        la(x.float())
    with pytest.raises(AttentionError, match="linear attention takes key padding and causal only"):
        la(x, key_padding=masks.causal())


def test_exported_from_the_package_and_modules():
    assert attnkit.LinearAttention is attnkit.modules.LinearAttention is LinearAttention
    assert attnkit.LinearState is attnkit.modules.LinearState is LinearState
