"""The Triton kernels of variable-length attention (FlashAttention-2 style; see
`kernels.attention` for the layout, the masking rules and the launchers that call these).

- `_attn_fwd_kernel`: one query block of one sample and head; streams the sample's key blocks
  through an online softmax (`_attn_fwd_step`) and saves the log-sum-exp per query row.
- `_attn_bwd_delta_kernel`: delta = rowsum(dO * O), the softmax backward's correction.
- `_attn_bwd_dkdv_kernel`: one key block: dK and dV over every query block of its sample.
- `_attn_bwd_dq_kernel`: one query block: dQ over every key block of its sample.

Softmax runs in base 2 (scores scaled by log2(e) on the host). Imports triton only.
"""

import triton
import triton.language as tl


@triton.jit
def _attn_fwd_step(
    acc,
    l_i,
    m_i,
    q,
    K,
    V,
    k_start,
    k_len,
    q_len,
    n0,
    h,
    offs_m,
    offs_n,
    offs_d,
    d_ok,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    qk_scale2,
    MASKED: tl.constexpr,
    EVEN_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    # One key block of the online softmax. MASKED blocks (the ragged tail, and every block of a
    # causal sample) mask keys past the sample's end and above the diagonal; full blocks do not.
    offs_kn = n0 + offs_n
    k_ptrs = K + (k_start + offs_kn)[:, None] * stride_kt + h * stride_kh + offs_d[None, :]
    v_ptrs = V + (k_start + offs_kn)[:, None] * stride_vt + h * stride_vh + offs_d[None, :]
    if MASKED:
        n_ok = offs_kn < k_len
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    elif EVEN_D:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    else:
        k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale2
    if MASKED:
        ok = n_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_kn[None, :] <= offs_m[:, None] + (k_len - q_len))
        s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    CU_Q,
    CU_K,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_lse_h,
    qk_scale2,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start
    m0 = pid_m * BLOCK_M
    # The grid is sized for the longest sample; shorter samples leave programs with no rows.
    if m0 >= q_len:
        return
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < HEAD_DIM
    q_ptrs = Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :]
    # Rows past the sample's end load zeros (finite scores) and are never stored.
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)

    # A finite start for the running max keeps rows that see no key free of (-inf) - (-inf).
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        # Keys past the last one any row of this block may see are never loaded.
        n_end = tl.minimum(k_len, m0 + BLOCK_M + k_len - q_len)
        for n0 in range(0, n_end, BLOCK_N):
            acc, l_i, m_i = _attn_fwd_step(
                acc, l_i, m_i, q, K, V, k_start, k_len, q_len, n0, h, offs_m, offs_n, offs_d,
                d_ok, stride_kt, stride_kh, stride_vt, stride_vh, qk_scale2,
                True, EVEN_D, CAUSAL, DOT_PREC,
            )  # fmt: skip
    else:
        n_full = k_len // BLOCK_N * BLOCK_N
        for n0 in range(0, n_full, BLOCK_N):
            acc, l_i, m_i = _attn_fwd_step(
                acc, l_i, m_i, q, K, V, k_start, k_len, q_len, n0, h, offs_m, offs_n, offs_d,
                d_ok, stride_kt, stride_kh, stride_vt, stride_vh, qk_scale2,
                False, EVEN_D, CAUSAL, DOT_PREC,
            )  # fmt: skip
        if n_full < k_len:
            acc, l_i, m_i = _attn_fwd_step(
                acc, l_i, m_i, q, K, V, k_start, k_len, q_len, n_full, h, offs_m, offs_n, offs_d,
                d_ok, stride_kt, stride_kh, stride_vt, stride_vh, qk_scale2,
                True, EVEN_D, CAUSAL, DOT_PREC,
            )  # fmt: skip

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    acc = acc / l_safe[:, None]
    # Natural-log LSE; +inf for rows that saw no key makes the backward's probabilities 0.
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("inf"))
    o_ptrs = O + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + h * stride_lse_h + q_start + offs_m, lse, mask=m_ok)


@triton.jit
def _attn_bwd_delta_kernel(
    O,
    DO,
    DELTA,
    total,
    stride_ot,
    stride_oh,
    stride_dot,
    stride_doh,
    stride_delta_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    # delta = rowsum(dO * O): the softmax backward's per-row correction term.
    pid = tl.program_id(0)
    h = tl.program_id(1)
    offs_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_t < total)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(
        O + offs_t[:, None] * stride_ot + h * stride_oh + offs_d[None, :], mask=mask, other=0.0
    )
    do = tl.load(
        DO + offs_t[:, None] * stride_dot + h * stride_doh + offs_d[None, :], mask=mask, other=0.0
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + h * stride_delta_h + offs_t, delta, mask=offs_t < total)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    CU_Q,
    CU_K,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dkt,
    stride_dkh,
    stride_dvt,
    stride_dvh,
    stride_lse_h,
    sm_scale,
    qk_scale2,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start
    n0 = pid_n * BLOCK_N
    if n0 >= k_len:
        return
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start

    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < k_len
    d_ok = offs_d < HEAD_DIM
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(
        K + (k_start + offs_n)[:, None] * stride_kt + h * stride_kh + offs_d[None, :],
        mask=kv_mask,
        other=0.0,
    )
    v = tl.load(
        V + (k_start + offs_n)[:, None] * stride_vt + h * stride_vh + offs_d[None, :],
        mask=kv_mask,
        other=0.0,
    )
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    m_begin = 0
    if CAUSAL:
        # Queries before the first that may see key n0 contribute nothing; skip their blocks.
        m_begin = tl.maximum(n0 - (k_len - q_len), 0) // BLOCK_M * BLOCK_M
    for m0 in range(m_begin, q_len, BLOCK_M):
        offs_qm = m0 + offs_m
        m_ok = offs_qm < q_len
        q_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(
            Q + (q_start + offs_qm)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
            mask=q_mask,
            other=0.0,
        )
        do = tl.load(
            DO + (q_start + offs_qm)[:, None] * stride_dot + h * stride_doh + offs_d[None, :],
            mask=q_mask,
            other=0.0,
        )
        lse = tl.load(LSE + h * stride_lse_h + q_start + offs_qm, mask=m_ok, other=float("inf"))
        delta = tl.load(DELTA + h * stride_lse_h + q_start + offs_qm, mask=m_ok, other=0.0)
        # Transposed scores [BLOCK_N, BLOCK_M], so dk and dv accumulate without a transpose.
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale2
        ok = n_ok[:, None] & m_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_n[:, None] <= offs_qm[None, :] + (k_len - q_len))
        s_t = tl.where(ok, s_t, float("-inf"))
        p_t = tl.exp2(s_t - lse[None, :] * 1.4426950408889634)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PREC)

    dk = dk * sm_scale
    tl.store(
        DK + (k_start + offs_n)[:, None] * stride_dkt + h * stride_dkh + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=kv_mask,
    )
    tl.store(
        DV + (k_start + offs_n)[:, None] * stride_dvt + h * stride_dvh + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=kv_mask,
    )


@triton.jit
def _attn_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    CU_Q,
    CU_K,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dqt,
    stride_dqh,
    stride_lse_h,
    sm_scale,
    qk_scale2,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start
    m0 = pid_m * BLOCK_M
    if m0 >= q_len:
        return
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < HEAD_DIM
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(
        Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=q_mask,
        other=0.0,
    )
    do = tl.load(
        DO + (q_start + offs_m)[:, None] * stride_dot + h * stride_doh + offs_d[None, :],
        mask=q_mask,
        other=0.0,
    )
    lse2 = tl.load(LSE + h * stride_lse_h + q_start + offs_m, mask=m_ok, other=float("inf"))
    lse2 = lse2 * 1.4426950408889634
    delta = tl.load(DELTA + h * stride_lse_h + q_start + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    n_end = k_len
    if CAUSAL:
        n_end = tl.minimum(k_len, m0 + BLOCK_M + k_len - q_len)
    for n0 in range(0, n_end, BLOCK_N):
        offs_kn = n0 + offs_n
        n_ok = offs_kn < k_len
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(
            K + (k_start + offs_kn)[:, None] * stride_kt + h * stride_kh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        v = tl.load(
            V + (k_start + offs_kn)[:, None] * stride_vt + h * stride_vh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale2
        ok = m_ok[:, None] & n_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_kn[None, :] <= offs_m[:, None] + (k_len - q_len))
        s = tl.where(ok, s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)

    dq = dq * sm_scale
    tl.store(
        DQ + (q_start + offs_m)[:, None] * stride_dqt + h * stride_dqh + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=q_mask,
    )
