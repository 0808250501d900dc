"""Linear attention: a kernel feature map φ in place of the softmax, so attention costs O(T).

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dh head dim (of query and
key), Dv value dim, m features of φ, C chunk length. Leading dims (...) are any batch dims, e.g.
(B, H); they broadcast between query, key and value.

With softmax's exp(qᵀk) replaced by a product of features φ(q)·φ(k) (Katharopoulos et al., 2020)::

    out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j φ(k_j) = φ(q_i)ᵀ S / φ(q_i)ᵀ z

- non-causal: S = φ(K)ᵀ V (..., m, Dv) and z = Σ_j φ(k_j) (..., m) once, then every query reads
  them: O(T·m·Dv) time, O(T·m + T·Dv + m·Dv) memory, never the (Tq, Tk) matrix.
- causal (Tq = Tk, query i reads keys j <= i): prefix sums S_i, z_i, computed chunk by chunk: within
  a chunk of C positions the masked quadratic form (C, C), across chunks a running state S, z
  (:func:`causal_linear`). Memory O(T·m + T·Dv + C²) (autograd keeps one S per chunk); the
  cumulative (T, m, Dv) tensor is never built.

The weights, the (Tq, Tk) matrix φ(q_i)·φ(k_j) / Σ_j' φ(q_i)·φ(k_j') that the output is the product
of with V, are available with ``need_weights=True``: that materialises O(Tq·Tk), for short inputs.

Feature maps (``FEATURE_MAPS[name]`` is the class, ``FEATURE_MAPS["performer"](64)`` makes one):

- ``elu``: φ(x) = elu(x) + 1 (Katharopoulos et al., 2020), m = Dh.
- ``relu``: φ(x) = relu(x), m = Dh (a query whose features meet no key's gets output 0).
- ``performer``: FAVOR+ positive orthogonal random features (Choromanski et al., 2021),
  φ(x) = exp(ωᵀx' - ‖x'‖²/2) / √m with x' = x·Dh^-1/4, so E[φ(q)·φ(k)] = exp(qᵀk / √Dh): linear
  attention with it estimates softmax attention, better as m grows (:class:`Performer`).

>>> q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)  # (B, H, T, Dh) each
>>> out, w = linear_attention(q, k, v, causal=True, need_weights=True)
>>> out.shape, w.shape, bool(w[..., 0, 1:].eq(0).all())
(torch.Size([2, 4, 10, 8]), torch.Size([2, 4, 10, 10]), True)
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AttentionError, check_bool, check_float_input, check_int, check_rank, check_real_device, shape_str
from .call import AttentionResult
from .functional import _check_qkv
from .masks import KeyPadding, Mask

__all__ = [
    "FEATURE_MAPS",
    "Elu",
    "FeatureMap",
    "Performer",
    "Relu",
    "causal_linear",
    "check_eps",
    "linear_attention",
    "orthogonal_gaussian",
    "resolve",
]


class FeatureMap(nn.Module):
    """A feature map φ: (..., T, Dh) -> (..., T, m), non-negative. One signature::

        phi(x, *, is_query: bool, valid: Tensor | None = None, shift: Tensor | None = None)

    ``is_query``: queries or keys (a map may stabilise them differently). ``valid`` (..., T) bool
    marks the real keys (False = padding; the caller zeroes those rows afterwards). ``shift``
    (..., 1, 1): for maps whose key features are divided by one shared factor (:meth:`key_shift`
    not None), the log of that factor; None computes it from ``x``. The factor cancels between the
    numerator and the denominator of linear attention, so it does not change the result.

    An ``nn.Module``, so a map that holds tensors (:class:`Performer`'s projection) moves and saves
    with the module that owns it.
    """

    name = ""

    def features(self, head_dim: int) -> int:
        """m, the number of features for inputs of ``head_dim`` features."""
        return head_dim

    def key_shift(self, x: Tensor, valid: Tensor | None = None) -> Tensor | None:
        """The log of the shared factor the keys' features are divided by, (..., 1, 1), detached;
        None for a map that does not stabilise its keys (the default)."""
        return None

    def forward(self, x: Tensor, *, is_query: bool, valid: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class Elu(FeatureMap):
    """φ(x) = elu(x) + 1 (Katharopoulos et al., 2020): positive, m = Dh."""

    name = "elu"

    def forward(self, x, *, is_query, valid=None, shift=None):
        return F.elu(x) + 1  # (..., T, Dh)


class Relu(FeatureMap):
    """φ(x) = relu(x): non-negative, m = Dh."""

    name = "relu"

    def forward(self, x, *, is_query, valid=None, shift=None):
        return F.relu(x)  # (..., T, Dh)


def orthogonal_gaussian(nb_features: int, dim: int, generator: torch.Generator, lead: tuple[int, ...] = ()) -> Tensor:
    """ω ``(*lead, m, dim)``, float64 on the CPU: FAVOR+'s orthogonal random features. Rows come in
    blocks of ``dim`` orthonormal directions (the Q of a Gaussian matrix's QR, the last block cut to
    m mod dim rows), each row then given the norm of an independent Gaussian row, chi-distributed
    with ``dim`` degrees of freedom (Choromanski et al., 2021; performer-pytorch's ``scaling=0``)."""
    blocks = -(-nb_features // dim)
    gauss = torch.randn(*lead, blocks, dim, dim, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(gauss)  # (..., blocks, dim, dim): orthonormal columns
    rows = q.transpose(-2, -1).flatten(-3, -2)[..., :nb_features, :]  # (..., m, dim): orthonormal rows per block
    norms = torch.randn(*lead, nb_features, dim, generator=generator, dtype=torch.float64).norm(dim=-1)  # (..., m)
    return rows * norms.unsqueeze(-1)  # (..., m, dim)


class Performer(FeatureMap):
    """FAVOR+ positive orthogonal random features (Choromanski et al., 2021).

    φ(x) = exp(ωᵀx' - ‖x'‖²/2) / √m, x' = x·Dh^-1/4, ω the rows of ``projection`` (..., m, Dh): then
    E[φ(q)·φ(k)] = exp(qᵀk / √Dh), softmax's kernel, and linear attention with φ estimates softmax
    attention (the error falls as 1/√m). Leading dims of the projection (e.g. (H, m, Dh), one per
    head) broadcast against the input's.

    Numerically stabilised as performer-pytorch does, by subtracting a max from the exponent before
    exp: each query row's own max, and one max over all the (real) keys and features per leading
    index. Both factors cancel in linear attention's ratio (and are detached: gradients are exact).
    Here the max is of the whole exponent (ωᵀx' - ‖x'‖²/2), so the largest feature is 1/√m.

    ``Performer(dim, nb_features=256, seed=0)`` draws ω with a ``torch.Generator`` seeded with
    ``seed``, on the CPU in float64 (the same ω on every machine), kept as a buffer;
    :meth:`redraw` draws a new one, :meth:`from_projection` takes a fixed one.

    >>> phi = Performer(8, nb_features=16)
    >>> phi.projection.shape, bool(phi(torch.randn(5, 8), is_query=True).gt(0).all())
    (torch.Size([16, 8]), True)
    """

    name = "performer"

    def __init__(self, dim: int, nb_features: int = 256, seed: int | None = 0):
        super().__init__()
        self.dim, self.nb_features = check_int("dim", dim), check_int("nb_features", nb_features)
        self.seed = None if seed is None else check_int("seed", seed, 0)
        w = orthogonal_gaussian(nb_features, dim, _generator(self.seed))
        self.register_buffer("projection", w.to(torch.get_default_dtype()))  # (m, Dh)

    @classmethod
    def from_projection(cls, projection: Tensor) -> Performer:
        """A Performer with the fixed ω ``projection`` (..., m, Dh), a floating tensor."""
        check_rank("projection", projection, 2, "(..., m, Dh)")
        check_float_input("projection", projection)
        m, dim = projection.shape[-2:]
        if m == 0 or dim == 0:
            raise AttentionError(
                f"projection has shape {shape_str(projection.shape)} but expected (..., m, Dh), m, Dh >= 1"
            )
        self = cls(dim, m)
        self.projection, self.seed = projection.detach().clone(), None  # replaces the drawn buffer
        return self

    def redraw(self, seed: int | None = None) -> Performer:
        """Draw a new ω of the same shape, in place (same device and dtype), from ``seed`` (None: the
        next seed, ``seed + 1``, or a random one after :meth:`from_projection`); returns self."""
        if seed is None:
            seed = None if self.seed is None else self.seed + 1
        else:
            check_int("seed", seed, 0)
        w = orthogonal_gaussian(self.nb_features, self.dim, _generator(seed), tuple(self.projection.shape[:-2]))
        with torch.no_grad():
            self.projection.copy_(w)
        self.seed = seed
        return self

    def extra_repr(self) -> str:
        return f"dim={self.dim}, nb_features={self.nb_features}, seed={self.seed}"

    def features(self, head_dim: int) -> int:
        return self.nb_features

    def _exponent(self, x: Tensor) -> Tensor:
        """ωᵀx' - ‖x'‖²/2, x' = x·Dh^-1/4: (..., T, Dh) -> (..., T, m)."""
        if x.shape[-1] != self.dim:
            raise AttentionError(
                f"feature_map Performer(dim={self.dim}) got an input of shape {shape_str(x.shape)}, but "
                f"expected (..., T, {self.dim}): the head dim of query and key must be the Performer's dim"
            )
        x = x * self.dim**-0.25
        w = self.projection.to(device=x.device, dtype=x.dtype)  # (..., m, Dh)
        return x @ w.transpose(-2, -1) - 0.5 * (x * x).sum(-1, keepdim=True)  # (..., T, m)

    def key_shift(self, x, valid=None):
        e = self._exponent(x)  # (..., Tk, m)
        return _global_max(e, valid)

    def forward(self, x, *, is_query, valid=None, shift=None):
        e = self._exponent(x)  # (..., T, m)
        if is_query:
            e = e - e.amax(-1, keepdim=True).detach()  # each query row's own max
        else:
            e = e - (_global_max(e, valid) if shift is None else shift)
        return torch.exp(e) / math.sqrt(self.nb_features)  # (..., T, m)


def _generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or from fresh entropy for None."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _global_max(e: Tensor, valid: Tensor | None) -> Tensor:
    """The max of ``e`` (..., Tk, m) over the real keys (``valid`` (..., Tk)) and the features,
    (..., 1, 1), detached; 0 where there is no real key (or no key at all)."""
    if valid is not None:
        e = torch.where(valid.unsqueeze(-1), e, float("-inf"))
    if e.shape[-2] == 0 or e.shape[-1] == 0:
        return e.new_zeros((*e.shape[:-2], 1, 1))
    top = e.detach().amax(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
    return torch.where(top == float("-inf"), torch.zeros_like(top), top)


FEATURE_MAPS: dict[str, type[FeatureMap]] = {"elu": Elu, "relu": Relu, "performer": Performer}


@functools.lru_cache(maxsize=8)
def _default_performer(dim: int) -> Performer:
    return Performer(dim)


def resolve(feature_map: str | FeatureMap, head_dim: int) -> FeatureMap:
    """The one place a feature map's name is looked up: ``elu`` and ``relu`` give the map,
    ``performer`` a ``Performer(head_dim)`` with the default m = 256 and seed 0 (one per head dim,
    kept; a module holds its own)."""
    if isinstance(feature_map, FeatureMap):
        return feature_map
    if isinstance(feature_map, str) and feature_map in FEATURE_MAPS:
        cls = FEATURE_MAPS[feature_map]
        return _default_performer(head_dim) if cls is Performer else cls()
    raise AttentionError(
        f"feature_map={feature_map!r} is unknown; expected one of {sorted(FEATURE_MAPS)} or a FeatureMap "
        f"(e.g. attnkit.core.linear.Performer(dim, nb_features))"
    )


def _key_valid(key_padding, lead: tuple[int, ...], tk: int) -> Tensor | None:
    """``key_padding`` as a bool (B, 1.., Tk) broadcastable to the keys' rows (..., Tk), or None."""
    if key_padding is None:
        return None
    if isinstance(key_padding, KeyPadding):
        key_padding = key_padding.valid
    elif isinstance(key_padding, Mask):
        raise AttentionError(
            f"linear attention takes key padding and causal only, got key_padding={key_padding!r}: pass "
            f"causal=True for a causal mask; for windows, block-sparse or dense masks use attnkit.attention"
        )
    if not isinstance(key_padding, Tensor):
        raise AttentionError(
            f"key_padding must be a bool tensor (B, Tk) (True = a real key) or masks.KeyPadding, got "
            f"{type(key_padding).__name__}"
        )
    check_real_device("key_padding", key_padding)
    if key_padding.dtype != torch.bool:
        raise AttentionError(
            f"key_padding has dtype {key_padding.dtype} but expected torch.bool (True = a real key); linear "
            f"attention takes key padding and causal only (no additive masks)"
        )
    if not lead or tuple(key_padding.shape) != (lead[0], tk):
        want = f"(B, Tk) = ({lead[0]}, {tk})" if lead else "(B, Tk) with query, key and value of shape (B, ..., T, D)"
        raise AttentionError(f"key_padding has shape {shape_str(key_padding.shape)} but expected {want}")
    return key_padding.reshape(lead[0], *(1,) * (len(lead) - 1), tk)  # (B, 1.., Tk)


def _check(query: Tensor, key: Tensor, value: Tensor) -> tuple[int, ...]:
    """Validate query, key and value (as :func:`attnkit.attention` does, and Dk = Dq: φ maps both);
    return their broadcast leading dims."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_real_device(name, x)
    _check_qkv(query, key, value, gqa_hint=False)
    if key.shape[-1] != query.shape[-1]:
        raise AttentionError(
            f"key has shape {shape_str(key.shape)} but expected (..., Tk, Dh={query.shape[-1]}) to match query "
            f"{shape_str(query.shape)}: the feature map φ is applied to both"
        )
    return tuple(torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2]))


def check_eps(eps) -> float:
    """Raise unless ``eps`` is a finite number > 0 (the denominator's floor); return it."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise AttentionError(f"eps must be a finite number > 0 (the floor of the denominator), got {eps!r}")
    return float(eps)


def causal_linear(
    phi_q: Tensor,
    phi_k: Tensor,
    value: Tensor,
    state: tuple[Tensor, Tensor] | None = None,
    *,
    chunk: int = 64,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal linear attention on features, chunk by chunk: query i reads keys j <= i and a state.

    ``phi_q``, ``phi_k`` (..., T, m), ``value`` (..., T, Dv); ``state`` (S (..., m, Dv), z (..., m)),
    the sums Σ φ(k_j) v_jᵀ and Σ φ(k_j) of earlier positions (None: none). Within a chunk of C
    positions the masked quadratic form A = tril(φ(Q_c) φ(K_c)ᵀ) (C, C); across chunks the state::

        out_c = (A V_c + φ(Q_c) S) / max(A 1 + φ(Q_c) z, eps);  S += φ(K_c)ᵀ V_c;  z += Σ φ(K_c)

    Returns (out (..., T, Dv), S, z), the state after the last position.
    """
    m, dv, t = phi_q.shape[-1], value.shape[-1], phi_q.shape[-2]
    lead = torch.broadcast_shapes(phi_q.shape[:-2], phi_k.shape[:-2], value.shape[:-2])
    if state is None:
        state = phi_q.new_zeros((*lead, m, dv)), phi_q.new_zeros((*lead, m))  # S (..., m, Dv), z (..., m)
    if t == 0:
        return phi_q.new_zeros((*lead, 0, dv)), *state
    # [V, 1] and [S, z]: one product gives the numerator and the denominator together
    ones = value.new_ones(()).expand(*value.shape[:-1], 1)
    v1 = torch.cat([value, ones], dim=-1)  # (..., T, Dv + 1)
    s1 = torch.cat([state[0], state[1].unsqueeze(-1)], dim=-1)  # (..., m, Dv + 1)
    c = min(chunk, t)
    above = torch.ones(c, c, dtype=torch.bool, device=phi_q.device).triu(1)  # (C, C): j > i, the future
    outs = []
    for start in range(0, t, c):
        stop = min(start + c, t)
        q, k, v = (x[..., start:stop, :] for x in (phi_q, phi_k, v1))  # (..., c, m), (..., c, m), (..., c, Dv + 1)
        a = (q @ k.transpose(-2, -1)).masked_fill(above[: stop - start, : stop - start], 0.0)  # (..., c, c)
        nd = a @ v + q @ s1  # (..., c, c) x (..., c, Dv + 1) + (..., c, m) x (..., m, Dv + 1) -> (..., c, Dv + 1)
        outs.append(nd[..., :dv] / nd[..., dv:].clamp_min(eps))  # numerator / max(denominator, eps)
        s1 = s1 + k.transpose(-2, -1) @ v  # (..., m, c) x (..., c, Dv + 1) -> (..., m, Dv + 1)
    return torch.cat(outs, dim=-2), s1[..., :dv], s1[..., dv]  # (..., T, Dv), S, z


def linear_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    feature_map: str | FeatureMap = "elu",
    causal: bool = False,
    key_padding: Tensor | KeyPadding | None = None,
    need_weights: bool = False,
    chunk: int | None = None,
    eps: float = 1e-6,
) -> AttentionResult:
    """Linear attention: out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / max(φ(q_i)ᵀ Σ_j φ(k_j), eps), in O(T).

    Args:
        query (..., Tq, Dh), key (..., Tk, Dh), value (..., Tk, Dv): one floating dtype; float16
            and bfloat16 are computed in float32 (the sums over T overflow half precision) and
            returned in their own dtype.
        feature_map: ``"elu"``, ``"relu"``, ``"performer"`` (a ``Performer(Dh)``, m = 256, seed 0)
            or a :class:`FeatureMap` (e.g. ``Performer(Dh, nb_features=64, seed=3)``).
        causal: query i reads keys j <= i (needs Tq = Tk), by chunked prefix sums (:func:`causal_linear`).
        key_padding: (B, Tk) bool, True = a real key (the package's polarity), or a
            ``masks.KeyPadding`` (``masks.padding(lengths)``); B is the first leading dim. Padded
            keys and values have no influence, whatever they hold (NaN included). Linear attention
            takes key padding and causal only: any other mask raises.
        need_weights: also return the weights (..., Tq, Tk), φ(q_i)·φ(k_j) / max(Σ_j' φ(q_i)·φ(k_j'), eps)
            (0 at padded and, when causal, future keys), materialised: O(Tq·Tk) time and memory, for
            short inputs.
        chunk: C, the chunk length of the causal path (default 64); causal only.
        eps: the floor of the denominator (> 0): a query whose features meet no key's (every key
            padded, relu's disjoint supports) gets output 0, not NaN. Above it the ratio is exact,
            and the weights' rows sum to 1.

    Returns:
        ``AttentionResult(output (..., Tq, Dv), weights (..., Tq, Tk) or None)``.

    Cost: non-causal O((Tq + Tk)·m·Dv) time, O(T·m + T·Dv + m·Dv) memory; causal O(T·m·Dv + T·C·(m
    + Dv)) time, O(T·m + T·Dv + C²) memory (plus one (m, Dv) state per chunk kept for backward).
    """
    lead = _check(query, key, value)
    check_bool("causal", causal)
    check_bool("need_weights", need_weights)
    eps = check_eps(eps)
    if chunk is not None:
        if not causal:
            raise AttentionError(f"chunk={chunk!r} applies to causal=True only (the non-causal path has no chunks)")
        check_int("chunk", chunk)
    tq, tk = query.shape[-2], key.shape[-2]
    if causal and tq != tk:
        raise AttentionError(
            f"causal=True needs as many queries as keys (query i reads keys j <= i), got query "
            f"{shape_str(query.shape)} (Tq={tq}) and key {shape_str(key.shape)} (Tk={tk})"
        )
    phi = resolve(feature_map, query.shape[-1])
    valid = _key_valid(key_padding, lead, tk)  # (B, 1.., Tk) or None
    dtype = query.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    query, key, value = (x.to(work) for x in (query, key, value))
    if valid is not None:  # padded keys and values zeroed first: NaN or inf there cannot leak
        keep = valid.unsqueeze(-1)  # (B, 1.., Tk, 1)
        key, value = torch.where(keep, key, 0.0), torch.where(keep, value, 0.0)
    phi_q = phi(query, is_query=True)  # (..., Tq, m)
    phi_k = phi(key, is_query=False, valid=valid)  # (..., Tk, m)
    if valid is not None:
        phi_k = torch.where(valid.unsqueeze(-1), phi_k, 0.0)
    if causal:
        out, _, _ = causal_linear(phi_q, phi_k, value, chunk=64 if chunk is None else chunk, eps=eps)
    else:
        s = phi_k.transpose(-2, -1) @ value  # (..., m, Tk) x (..., Tk, Dv) -> (..., m, Dv)
        z = phi_k.sum(-2)  # (..., m)
        den = phi_q @ z.unsqueeze(-1)  # (..., Tq, m) x (..., m, 1) -> (..., Tq, 1)
        out = (phi_q @ s) / den.clamp_min(eps)  # (..., Tq, Dv)
    weights = None
    if need_weights:
        scores = phi_q @ phi_k.transpose(-2, -1)  # (..., Tq, m) x (..., m, Tk) -> (..., Tq, Tk)
        if causal:
            scores = scores.tril()
        weights = (scores / scores.sum(-1, keepdim=True).clamp_min(eps)).to(dtype)  # (..., Tq, Tk)
    return AttentionResult(out.to(dtype), weights)
