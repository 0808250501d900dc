"""The Triton kernels of ``additive_triton``; the backend, the autograd Function and the design are in
:mod:`attnkit.backends.triton_additive`.

Shape legend: N the leading dims flattened (B or B·H), Tq query positions, Tk key positions, A the
additive hidden dim, Dv the value dim. Blocks: BM queries × BN keys × BA hidden units; BD covers Dv.

Only :func:`attnkit.backends.triton_additive._kernels` imports this module, once ``supports`` has
found triton in the mode the call needs. ``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates
a function, so ``_kernels`` reloads this module when the variable changed since it was imported.
The guard below is for ``pytest --doctest-modules``, which imports every module of the package,
triton or not.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ModuleNotFoundError:  # nothing here is called without triton; see the module docstring
    triton = tl = None

INTERPRETED = triton is not None and bool(triton.knobs.runtime.interpret)  # how the kernels below were built
_jit = triton.jit if triton is not None else (lambda fn: fn)


@_jit
def _tanh(x):
    """tanh x from e = exp(-2|x|) in (0, 1]: never overflows, exact to rounding for large |x|."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@_jit
def _tanh_and_slope(x):
    """(tanh x, 1 - tanh² x); the slope as 4e / (1 + e)², with no cancellation where tanh saturates."""
    e = tl.exp(-2.0 * tl.abs(x))
    r = 1.0 / (1.0 + e)
    t = (1.0 - e) * r
    return tl.where(x < 0, -t, t), 4.0 * e * r * r


@_jit
def _hidden_chunk(a_ptr, b_ptr, v_ptr, offs_i, offs_j, offs_a, tq, tk, hidden, sa_t, sa_a, sb_t, sb_a, sv_a):
    """One chunk of hidden units: a (BM, BA), b (BN, BA), v (BA); zero outside the sizes (tanh 0 · 0 = 0)."""
    in_a = offs_a < hidden
    x = tl.load(
        a_ptr + offs_i[:, None] * sa_t + offs_a[None, :] * sa_a,
        mask=(offs_i[:, None] < tq) & in_a[None, :],
        other=0.0,
    )
    y = tl.load(
        b_ptr + offs_j[:, None] * sb_t + offs_a[None, :] * sb_a,
        mask=(offs_j[:, None] < tk) & in_a[None, :],
        other=0.0,
    )
    w = tl.load(v_ptr + offs_a * sv_a, mask=in_a, other=0.0)
    return x, y, w


@_jit
def _scores(
    a_ptr, b_ptr, v_ptr, offs_i, offs_j, tq, tk, hidden, sa_t, sa_a, sb_t, sb_a, sv_a,
    BM: tl.constexpr, BN: tl.constexpr, BA: tl.constexpr,
):
    """s_ij = Σ_a v_a tanh(a_ia + b_ja) for one (BM, BN) block, walking A in chunks of BA."""
    s = tl.zeros((BM, BN), dtype=a_ptr.dtype.element_ty)
    for a0 in range(0, hidden, BA):
        offs_a = a0 + tl.arange(0, BA)
        x, y, w = _hidden_chunk(
            a_ptr, b_ptr, v_ptr, offs_i, offs_j, offs_a, tq, tk, hidden, sa_t, sa_a, sb_t, sb_a, sv_a
        )
        t = _tanh(x[:, None, :] + y[None, :, :])  # (BM, BN, BA)
        s += tl.sum(t * w[None, None, :], axis=2)
    return s


@_jit
def _allowed(
    offs_i, offs_j, tq, tk, band_lo, band_hi, valid_ptr, svalid_j, dense_ptr, sd_i, sd_j,
    HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, HAS_VALID: tl.constexpr, HAS_DENSE: tl.constexpr,
):
    """(BM, BN) bool, True = may attend: in range, in the band i + lo <= j <= i + hi, and allowed by the
    padding and the dense mask."""
    ok = (offs_i[:, None] < tq) & (offs_j[None, :] < tk)
    if HAS_LO:
        ok = ok & (offs_j[None, :] >= offs_i[:, None] + band_lo)
    if HAS_HI:
        ok = ok & (offs_j[None, :] <= offs_i[:, None] + band_hi)
    if HAS_VALID:
        valid = tl.load(valid_ptr + offs_j * svalid_j, mask=offs_j < tk, other=0)  # (BN,) uint8
        ok = ok & (valid[None, :] != 0)
    if HAS_DENSE:
        dense = tl.load(dense_ptr + offs_i[:, None] * sd_i + offs_j[None, :] * sd_j, mask=ok, other=0)
        ok = ok & (dense != 0)
    return ok


@_jit
def forward_kernel(
    a_ptr, b_ptr, v_ptr, x_ptr, o_ptr, lse_ptr, s_ptr, valid_ptr, dense_ptr,
    tq, tk, hidden, dv, inner, band_lo, band_hi, q_blocks,
    sa_n, sa_t, sa_a, sb_n, sb_t, sb_a, sv_n, sv_a, sx_n, sx_t, sx_d,
    so_n, so_t, so_d, sl_n, sl_t, ss_n, ss_i, ss_j, svalid_b, svalid_j, sd_n, sd_i, sd_j,
    HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, HAS_VALID: tl.constexpr, HAS_DENSE: tl.constexpr,
    WRITE_SCORES: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BA: tl.constexpr, BD: tl.constexpr,
):
    """One program per (row n, block of BM queries): walk the key blocks with an online softmax.

    Writes o (N, Tq, Dv), lse (N, Tq) (+inf on a row with no allowed key, whose output is 0) and,
    with WRITE_SCORES, the scores s (N, Tq, Tk), left as they are (-inf) in key blocks out of the band.
    """
    pid = tl.program_id(0)
    n = (pid // q_blocks).to(tl.int64)
    i0 = (pid % q_blocks) * BM
    offs_i = i0 + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    a_ptr += n * sa_n
    b_ptr += n * sb_n
    v_ptr += n * sv_n
    x_ptr += n * sx_n
    valid_ptr += (n // inner) * svalid_b
    dense_ptr += n * sd_n
    dtype = a_ptr.dtype.element_ty
    best = tl.full((BM,), float("-inf"), dtype=dtype)  # running max of the allowed scores
    total = tl.zeros((BM,), dtype=dtype)  # Σ_j exp(s_ij - best_i) so far
    acc = tl.zeros((BM, BD), dtype=dtype)  # Σ_j exp(s_ij - best_i) value_j so far
    j_start = 0  # key blocks out of every query's band are skipped
    if HAS_LO:
        j_start = (tl.maximum(i0 + band_lo, 0) // BN) * BN
    j_end = tk
    if HAS_HI:
        j_end = tl.minimum(tk, i0 + BM + band_hi)
    for j0 in range(j_start, j_end, BN):
        offs_j = j0 + tl.arange(0, BN)
        s = _scores(a_ptr, b_ptr, v_ptr, offs_i, offs_j, tq, tk, hidden, sa_t, sa_a, sb_t, sb_a, sv_a, BM, BN, BA)
        ok = _allowed(
            offs_i, offs_j, tq, tk, band_lo, band_hi, valid_ptr, svalid_j, dense_ptr, sd_i, sd_j,
            HAS_LO, HAS_HI, HAS_VALID, HAS_DENSE,
        )
        s = tl.where(ok, s, float("-inf"))
        if WRITE_SCORES:
            in_range = (offs_i[:, None] < tq) & (offs_j[None, :] < tk)
            tl.store(s_ptr + n * ss_n + offs_i[:, None] * ss_i + offs_j[None, :] * ss_j, s, mask=in_range)
        new_best = tl.maximum(best, tl.max(s, axis=1))
        shift = tl.where(new_best == float("-inf"), 0.0, new_best)  # no key yet: exp(-inf - 0) = 0
        p = tl.exp(s - shift[:, None])  # (BM, BN)
        keep = tl.exp(best - shift)  # rescales what was summed under the old max
        total = total * keep + tl.sum(p, axis=1)
        values = tl.load(
            x_ptr + offs_j[:, None] * sx_t + offs_d[None, :] * sx_d,
            mask=(offs_j[:, None] < tk) & (offs_d[None, :] < dv),
            other=0.0,
        )  # (BN, BD)
        acc = acc * keep[:, None] + tl.dot(p, values, input_precision="ieee")  # (BM, BN) x (BN, BD)
        best = new_best
    has_key = total > 0
    safe_total = tl.where(has_key, total, 1.0)
    out = acc / safe_total[:, None]
    lse = tl.where(has_key, best + tl.log(safe_total), float("inf"))
    in_q = offs_i < tq
    tl.store(
        o_ptr + n * so_n + offs_i[:, None] * so_t + offs_d[None, :] * so_d,
        out,
        mask=in_q[:, None] & (offs_d[None, :] < dv),
    )
    tl.store(lse_ptr + n * sl_n + offs_i * sl_t, lse, mask=in_q)


@_jit
def backward_kernel(
    a_ptr, b_ptr, v_ptr, x_ptr, do_ptr, lse_ptr, delta_ptr, dw_ptr, valid_ptr, dense_ptr,
    da_ptr, db_ptr, dvp_ptr, dx_ptr,
    tq, tk, hidden, dv, inner, band_lo, band_hi, k_blocks,
    sa_n, sa_t, sa_a, sb_n, sb_t, sb_a, sv_n, sv_a, sx_n, sx_t, sx_d,
    sdo_n, sdo_t, sdo_d, sl_n, sl_t, sdw_n, sdw_i, sdw_j, svalid_b, svalid_j, sd_n, sd_i, sd_j,
    sda_n, sda_t, sda_a, sdb_n, sdb_t, sdb_a, sdvp_n, sdvp_k, sdvp_a, sdx_n, sdx_t, sdx_d,
    HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, HAS_VALID: tl.constexpr, HAS_DENSE: tl.constexpr,
    HAS_DW: tl.constexpr, HIDDEN_GRADS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BA: tl.constexpr, BD: tl.constexpr,
):
    """One program per (row n, block of BN keys): walk the query blocks, recomputing s and P.

    The program owns its keys: d value (BN, Dv) sums in registers; db (BN, A) and its row of the dv
    partial sums (N, key blocks, A), walked chunk by chunk of A, take atomic adds that meet no other
    program (fire-and-forget reductions, and safe whichever thread holds an element from one loop
    iteration to the next). da (Tq, A) rows are shared by every key block: their atomic adds contend.
    """
    pid = tl.program_id(0)
    n = (pid // k_blocks).to(tl.int64)
    kb = pid % k_blocks
    j0 = kb * BN
    offs_j = j0 + tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    a_ptr += n * sa_n
    b_ptr += n * sb_n
    v_ptr += n * sv_n
    do_ptr += n * sdo_n
    lse_ptr += n * sl_n
    delta_ptr += n * sl_n
    dw_ptr += n * sdw_n
    valid_ptr += (n // inner) * svalid_b
    dense_ptr += n * sd_n
    da_ptr += n * sda_n
    db_ptr += n * sdb_n
    dvp_ptr += n * sdvp_n + kb * sdvp_k
    in_j = offs_j < tk
    values = tl.load(
        x_ptr + n * sx_n + offs_j[:, None] * sx_t + offs_d[None, :] * sx_d,
        mask=in_j[:, None] & (offs_d[None, :] < dv),
        other=0.0,
    )  # (BN, BD)
    d_values = tl.zeros((BN, BD), dtype=values.dtype)
    i_start = 0  # query blocks none of whose bands reach these keys are skipped: j - hi <= i <= j - lo
    if HAS_HI:
        i_start = (tl.maximum(j0 - band_hi, 0) // BM) * BM
    i_end = tq
    if HAS_LO:
        i_end = tl.minimum(tq, j0 + BN - band_lo)
    for i0 in range(i_start, i_end, BM):
        offs_i = i0 + tl.arange(0, BM)
        in_i = offs_i < tq
        s = _scores(a_ptr, b_ptr, v_ptr, offs_i, offs_j, tq, tk, hidden, sa_t, sa_a, sb_t, sb_a, sv_a, BM, BN, BA)
        ok = _allowed(
            offs_i, offs_j, tq, tk, band_lo, band_hi, valid_ptr, svalid_j, dense_ptr, sd_i, sd_j,
            HAS_LO, HAS_HI, HAS_VALID, HAS_DENSE,
        )
        lse = tl.load(lse_ptr + offs_i * sl_t, mask=in_i, other=float("inf"))
        p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)  # (BM, BN); a row with no key has lse = +inf: 0
        d_out = tl.load(
            do_ptr + offs_i[:, None] * sdo_t + offs_d[None, :] * sdo_d,
            mask=in_i[:, None] & (offs_d[None, :] < dv),
            other=0.0,
        )  # (BM, BD)
        d_values += tl.dot(tl.trans(p), d_out, input_precision="ieee")  # (BN, BM) x (BM, BD)
        if HIDDEN_GRADS:
            dp = tl.dot(d_out, tl.trans(values), input_precision="ieee")  # dL/dP, (BM, BD) x (BD, BN)
            if HAS_DW:
                dp += tl.load(dw_ptr + offs_i[:, None] * sdw_i + offs_j[None, :] * sdw_j, mask=ok, other=0.0)
            delta = tl.load(delta_ptr + offs_i * sl_t, mask=in_i, other=0.0)  # rowsum(dP ⊙ P)
            ds = p * (dp - delta[:, None])  # dL/ds, (BM, BN)
            for a0 in range(0, hidden, BA):
                offs_a = a0 + tl.arange(0, BA)
                in_a = offs_a < hidden
                x, y, w = _hidden_chunk(
                    a_ptr, b_ptr, v_ptr, offs_i, offs_j, offs_a, tq, tk, hidden, sa_t, sa_a, sb_t, sb_a, sv_a
                )
                t, slope = _tanh_and_slope(x[:, None, :] + y[None, :, :])  # (BM, BN, BA)
                g = ds[:, :, None] * slope  # dL/d(a_i + b_j) / v
                tl.atomic_add(  # shared with every other key block
                    da_ptr + offs_i[:, None] * sda_t + offs_a[None, :] * sda_a,
                    tl.sum(g, axis=1) * w[None, :],
                    mask=in_i[:, None] & in_a[None, :],
                    sem="relaxed",
                )
                tl.atomic_add(  # this program's own rows: no contention
                    db_ptr + offs_j[:, None] * sdb_t + offs_a[None, :] * sdb_a,
                    tl.sum(g, axis=0) * w[None, :],
                    mask=in_j[:, None] & in_a[None, :],
                    sem="relaxed",
                )
                tl.atomic_add(  # this program's own partial sum
                    dvp_ptr + offs_a * sdvp_a,
                    tl.sum(tl.sum(ds[:, :, None] * t, axis=1), axis=0),
                    mask=in_a,
                    sem="relaxed",
                )
    tl.store(
        dx_ptr + n * sdx_n + offs_j[:, None] * sdx_t + offs_d[None, :] * sdx_d,
        d_values,
        mask=in_j[:, None] & (offs_d[None, :] < dv),
    )
