"""Fused attention forward in Triton (FlashAttention-2 style).

    out = attention_fwd(q, k, v, key_padding_mask=None, causal=False, scale=None)

One program owns a ``BLOCK_M`` block of query rows of one (batch, head) and walks the
key/value sequence in ``BLOCK_N`` blocks, keeping a running row max ``m`` and row sum
``l`` in fp32 (online softmax), so no ``seq_q x seq_k`` matrix is ever materialised.

* dtypes: fp16, bf16, fp32 in; accumulation always fp32; output in ``q.dtype``. fp32
  matmuls use ``input_precision="ieee"`` unless ``allow_tf32=True``.
* head_dim 1..256, padded to ``BLOCK_D = max(16, next_power_of_2(head_dim))`` with
  masked loads; any sequence length (masked tails); arbitrary strides.
* ``key_padding_mask`` (batch, seq_k) bool, True = attend. Per batch the first and last
  attended key bound the key loop, so leading/trailing padding costs nothing; a row
  with no attended key returns zeros, never NaN.
* ``attention_varlen_fwd``: the same kernel over packed tokens (flash-attention's
  ``cu_seqlens`` layout, plus ``seqused`` as flash-attention 3): program (m, h, b) reads
  sequence b's rows from its offsets, and blocks past its length return at once.
* ``causal``: top-left convention of ``torch.nn.functional.scaled_dot_product_attention``
  (query i attends keys j <= i, also when seq_q != seq_k). Key blocks past the diagonal
  are skipped; blocks left of it run without the causal mask.

On a GPU the block sizes are autotuned (keyed on bucketed sequence lengths, head_dim,
causal, mask, dtype). Under ``TRITON_INTERPRET=1`` (tests on CPU tensors) a single small
fixed tile is used instead. The interpreter switch is read when this module is imported.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - exercised only without triton
    raise ImportError(
        "fastft.kernels.attention needs Triton (installed with fastft on Linux: pip install triton); "
        f"the fused-attention op falls back to its other backends without it ({exc})"
    ) from exc

__all__ = ["attention_fwd", "attention_varlen_fwd", "INTERPRET"]


def _interpret_mode() -> bool:
    """Whether triton.jit builds interpreted kernels right now (read at import)."""
    try:
        return bool(triton.knobs.runtime.interpret)  # triton >= 3.4
    except AttributeError:
        return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


INTERPRET = _interpret_mode()
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256
# fixed tile used under the interpreter (and by tests that pass block sizes explicitly)
_INTERPRET_BLOCK_M = 32
_INTERPRET_BLOCK_N = 32


@triton.jit
def _attn_inner(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    mask_base,
    kv_lo,
    kv_hi,
    offs_m,
    offs_n,
    offs_d,
    seq_k,
    head_dim,
    qk_scale,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    stride_mn,
    CAUSAL_MASK: tl.constexpr,
    CHECK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """Online-softmax update of (acc, l_i, m_i) over the key blocks [kv_lo, kv_hi)."""
    d_ok = offs_d < head_dim
    for start_n in range(kv_lo, kv_hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        n_ok = cols < seq_k
        # K^T tile (BLOCK_D, BLOCK_N) and V tile (BLOCK_N, BLOCK_D)
        kt_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
        if CHECK_N:
            if EVEN_D:
                kt = tl.load(kt_ptrs, mask=n_ok[None, :], other=0.0)
            else:
                kt = tl.load(kt_ptrs, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        else:
            if EVEN_D:
                kt = tl.load(kt_ptrs)
            else:
                kt = tl.load(kt_ptrs, mask=d_ok[:, None], other=0.0)
        if UPCAST_DOT:  # interpreter: numpy has no bf16 matmul; same values, fp32 product
            qk = tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision=INPUT_PRECISION)
        else:
            qk = tl.dot(q, kt, input_precision=INPUT_PRECISION)
        qk = qk * qk_scale  # log2 domain: scale * log2(e) folded in
        if HAS_MASK:
            keep = tl.load(mask_base + cols * stride_mn, mask=n_ok, other=0) != 0
            if CAUSAL_MASK:
                qk = tl.where(keep[None, :] & (cols[None, :] <= offs_m[:, None]), qk, float("-inf"))
            else:
                qk = tl.where(keep[None, :], qk, float("-inf"))
        else:
            if CAUSAL_MASK:
                if CHECK_N:
                    qk = tl.where(n_ok[None, :] & (cols[None, :] <= offs_m[:, None]), qk, float("-inf"))
                else:
                    qk = tl.where(cols[None, :] <= offs_m[:, None], qk, float("-inf"))
            elif CHECK_N:
                qk = tl.where(n_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        if HAS_MASK:
            # a row with no attended key so far keeps m = -inf; shift by 0 instead (p = 0)
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_shift = m_new  # every row sees >= 1 key in every visited block: finite
        p = tl.math.exp2(qk - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if HAS_MASK:
            # a masked key's value is not read (keep is False past seq_k too): 0 * inf or NaN
            # padding would turn the rows sharing its tile NaN in the product below
            if EVEN_D:
                v = tl.load(v_ptrs, mask=keep[:, None], other=0.0)
            else:
                v = tl.load(v_ptrs, mask=keep[:, None] & d_ok[None, :], other=0.0)
        elif CHECK_N:
            if EVEN_D:
                v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
            else:
                v = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        else:
            if EVEN_D:
                v = tl.load(v_ptrs)
            else:
                v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        if UPCAST_DOT:
            acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc, input_precision=INPUT_PRECISION)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


def _attn_fwd_kernel(
    Q,
    K,
    V,
    O,  # noqa: E741 - the output pointer, named as in the FlashAttention papers
    Mask,
    KvStart,
    KvEnd,
    CuQ,
    CuK,
    UsedQ,
    UsedK,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_mb,
    stride_mn,
    seq_q,
    seq_k,
    head_dim,
    qk_scale,
    seq_q_bucket,
    seq_k_bucket,  # autotuning key only
    IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_D: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    VARLEN: tl.constexpr = False,
    USED_Q: tl.constexpr = False,
    USED_K: tl.constexpr = False,
):
    start_m = tl.program_id(0)
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2).to(tl.int64)

    if VARLEN:  # packed tokens: sequence off_b is rows [cu[b], cu[b] + len) of q / k / v / out
        q_start = tl.load(CuQ + off_b).to(tl.int64)
        k_start = tl.load(CuK + off_b).to(tl.int64)
        if USED_Q:
            seq_q = tl.load(UsedQ + off_b)
        else:
            seq_q = tl.load(CuQ + off_b + 1) - tl.load(CuQ + off_b)
        if USED_K:
            seq_k = tl.load(UsedK + off_b)
        else:
            seq_k = tl.load(CuK + off_b + 1) - tl.load(CuK + off_b)
        q_off = q_start * stride_qm
        o_off = q_start * stride_om
        k_off = k_start * stride_kn
        v_off = k_start * stride_vn
    else:
        q_off = off_b * stride_qb
        o_off = off_b * stride_ob
        k_off = off_b * stride_kb
        v_off = off_b * stride_vb
    if start_m * BLOCK_M >= seq_q:  # (varlen) a block past this sequence's queries
        return

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seq_q
    d_ok = offs_d < head_dim

    q_ptrs = Q + q_off + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    if EVEN_D:
        q = tl.load(q_ptrs, mask=m_ok[:, None], other=0.0)
    else:
        q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + k_off + off_h * stride_kh
    v_base = V + v_off + off_h * stride_vh
    mask_base = Mask + off_b * stride_mb

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # key range of this (batch, query block): [lo, hi)
    if HAS_MASK:
        lo = (tl.load(KvStart + off_b) // BLOCK_N) * BLOCK_N  # first attended key, block-aligned
        hi = tl.load(KvEnd + off_b)  # one past the last attended key (0 if none)
    else:
        lo = 0
        hi = seq_k
    if IS_CAUSAL:
        hi = tl.minimum(hi, (start_m + 1) * BLOCK_M)
        # whole blocks left of the first query row (and inside seq_k) need neither the
        # causal nor the bounds mask; the rest, from the block-aligned `diag`, gets both
        diag = tl.minimum(tl.maximum(((start_m * BLOCK_M) // BLOCK_N) * BLOCK_N, lo), (hi // BLOCK_N) * BLOCK_N)
        acc, l_i, m_i = _attn_inner(
            acc,
            l_i,
            m_i,
            q,
            k_base,
            v_base,
            mask_base,
            lo,
            diag,
            offs_m,
            offs_n,
            offs_d,
            seq_k,
            head_dim,
            qk_scale,
            stride_kn,
            stride_kd,
            stride_vn,
            stride_vd,
            stride_mn,
            False,
            False,
            HAS_MASK,
            EVEN_D,
            BLOCK_N,
            INPUT_PRECISION,
            UPCAST_DOT,
        )
        acc, l_i, m_i = _attn_inner(
            acc,
            l_i,
            m_i,
            q,
            k_base,
            v_base,
            mask_base,
            diag,
            hi,
            offs_m,
            offs_n,
            offs_d,
            seq_k,
            head_dim,
            qk_scale,
            stride_kn,
            stride_kd,
            stride_vn,
            stride_vd,
            stride_mn,
            True,
            not EVEN_N,
            HAS_MASK,
            EVEN_D,
            BLOCK_N,
            INPUT_PRECISION,
            UPCAST_DOT,
        )
    else:
        acc, l_i, m_i = _attn_inner(
            acc,
            l_i,
            m_i,
            q,
            k_base,
            v_base,
            mask_base,
            lo,
            hi,
            offs_m,
            offs_n,
            offs_d,
            seq_k,
            head_dim,
            qk_scale,
            stride_kn,
            stride_kd,
            stride_vn,
            stride_vd,
            stride_mn,
            False,
            not EVEN_N,
            HAS_MASK,
            EVEN_D,
            BLOCK_N,
            INPUT_PRECISION,
            UPCAST_DOT,
        )

    if HAS_MASK or VARLEN:  # fully masked row / (varlen) a sequence without keys: acc == 0 -> 0
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    o_ptrs = O + o_off + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    if EVEN_D:
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=m_ok[:, None])
    else:
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


# (BLOCK_M, BLOCK_N, num_warps, num_stages): a curated set that covers every value of
# each axis without the full product (tuning compiles each one per specialisation)
_GPU_CONFIGS = [
    (64, 32, 4, 3),
    (64, 64, 4, 3),
    (64, 64, 4, 4),
    (64, 128, 4, 2),
    (128, 32, 4, 3),
    (128, 64, 4, 3),
    (128, 64, 8, 3),
    (128, 64, 8, 4),
    (128, 64, 4, 4),
    (128, 128, 8, 2),
    (128, 128, 8, 3),
]


def _gpu_configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in _GPU_CONFIGS]


def _prune_configs(configs, named_args, **kwargs):
    """Drop tiles that cannot pay off: BLOCK_M = 128 for short queries, wide or deep
    tiles at head_dim > 128 or in fp32 (shared memory). Configs that still do not fit
    are skipped by the autotuner (OutOfResources)."""
    block_d = kwargs.get("BLOCK_D", 64)
    wide = named_args["Q"].element_size() >= 4 or block_d > 128
    seq_q = named_args["seq_q"]
    kept = []
    for c in configs:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if wide and (c.num_stages > 3 or bn > 64):
            continue
        if bm == 128 and seq_q <= 64:
            continue
        kept.append(c)
    return kept or configs[:1]


def _even(args):
    return {  # varlen: seq_k is the longest sequence, the others need the bounds checks
        "EVEN_N": args["seq_k"] % args["BLOCK_N"] == 0 and not args.get("VARLEN", False),
        "EVEN_D": args["head_dim"] == args["BLOCK_D"],
    }


_heuristics = triton.heuristics(
    {
        "EVEN_N": lambda a: _even(a)["EVEN_N"],
        "EVEN_D": lambda a: _even(a)["EVEN_D"],
    }
)

# fixed-tile variant (interpreter, explicit block sizes) and autotuned variant (GPU)
_attn_fwd_fixed = _heuristics(triton.jit(_attn_fwd_kernel))
if INTERPRET:
    _attn_fwd_tuned = _attn_fwd_fixed
else:
    _attn_fwd_tuned = triton.autotune(
        configs=_gpu_configs(),
        key=["seq_q_bucket", "seq_k_bucket", "head_dim", "IS_CAUSAL", "HAS_MASK", "INPUT_PRECISION", "VARLEN"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )(_heuristics(triton.jit(_attn_fwd_kernel)))


def _check(q, k, v, key_padding_mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(
                f"attention_fwd: {name} must be a 4-D tensor (batch, heads, seq, head_dim), "
                f"got {getattr(t, 'shape', type(t))}"
            )
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"attention_fwd: {name} has dtype {t.dtype}; supported: fp16, bf16, fp32")
        if t.device != q.device:
            raise ValueError(f"attention_fwd: {name} is on {t.device}, q is on {q.device}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"attention_fwd: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, heads, _, head_dim = q.shape
    if k.shape[:2] != (batch, heads) or v.shape[:2] != (batch, heads):
        raise ValueError(
            f"attention_fwd: k {tuple(k.shape)} and v {tuple(v.shape)} must match q {tuple(q.shape)} in batch and heads"
        )
    if k.shape[3] != head_dim or v.shape[3] != head_dim:
        raise ValueError(
            f"attention_fwd: k and v head_dim must equal q head_dim {head_dim}, got {k.shape[3]} and {v.shape[3]}"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"attention_fwd: k seq {k.shape[2]} != v seq {v.shape[2]}")
    if not 1 <= head_dim <= _MAX_HEAD_DIM:
        raise ValueError(f"attention_fwd: head_dim {head_dim} not in [1, {_MAX_HEAD_DIM}]")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(
                f"attention_fwd: key_padding_mask must be bool (True = attend), got {key_padding_mask.dtype}"
            )
        if tuple(key_padding_mask.shape) != (batch, k.shape[2]):
            raise ValueError(
                f"attention_fwd: key_padding_mask must be (batch, seq_k) = "
                f"{(batch, k.shape[2])}, got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(f"attention_fwd: key_padding_mask is on {key_padding_mask.device}, q is on {q.device}")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError(
            f"attention_fwd: the Triton kernel needs CUDA tensors (q is on {q.device}); "
            "set TRITON_INTERPRET=1 before importing to run it on CPU"
        )
    if q.shape[1] > 65535 or q.shape[0] > 65535:
        raise ValueError(f"attention_fwd: batch {q.shape[0]} and heads {q.shape[1]} must be <= 65535")


def _check_offsets(fn: str, rows_q: int, rows_k: int, tensors, out_row_stride: int) -> None:
    """The kernel addresses rows within one (sequence, head) with 32-bit offsets (row * row
    stride): a sequence whose rows span 2^31 elements or more would wrap (an illegal address, or
    another tensor's memory). ``tensors``: (name, tensor, its row dimension)."""
    for name, t, dim in tensors:
        rows = rows_q if name == "q" else rows_k
        if rows > 0 and (rows - 1) * abs(t.stride(dim)) + (t.shape[-1] - 1) * abs(t.stride(-1)) >= 2**31:
            raise ValueError(
                f"{fn}: {name}'s rows of one sequence and head span {(rows - 1) * abs(t.stride(dim)):,} elements, "
                "past the kernel's 32-bit offsets (2^31): use shorter sequences or a layout with a smaller row stride"
            )
    if rows_q > 0 and (rows_q - 1) * out_row_stride >= 2**31:
        raise ValueError(f"{fn}: the output's rows of one sequence and head pass the kernel's 32-bit offsets (2^31)")


def _check_launch(fn: str, block_m, block_n, num_warps, num_stages) -> None:
    if (num_warps is not None or num_stages is not None) and block_m is None and block_n is None:
        raise ValueError(f"{fn}: num_warps and num_stages set a fixed tile's launch: give block_m or block_n too")


def _launch(block_m: int, num_warps, num_stages) -> dict:
    """Launch settings of a fixed tile."""
    return {
        "num_warps": int(num_warps) if num_warps else (4 if block_m <= 64 else 8),
        "num_stages": int(num_stages) if num_stages else 2,
    }


def _bucket(n: int) -> int:
    return 1 if n <= 1 else triton.next_power_of_2(n)


def _run(fn: str, args: tuple, meta: dict, rows, block_m, block_n, num_warps, num_stages) -> None:
    """Launch the kernel over ``rows`` = (query rows, heads, batch): a fixed tile when one is given
    (always under the interpreter), else the autotuned kernel."""
    seq_q, heads, batch = rows
    if INTERPRET or block_m is not None or block_n is not None:
        bm = block_m or _INTERPRET_BLOCK_M
        bn = block_n or _INTERPRET_BLOCK_N
        for name, b in (("block_m", bm), ("block_n", bn)):
            if b < 16 or b & (b - 1):
                raise ValueError(f"{fn}: {name} must be a power of two >= 16, got {b}")
        kw = {} if INTERPRET else _launch(bm, num_warps, num_stages)
        _attn_fwd_fixed[(triton.cdiv(seq_q, bm), heads, batch)](*args, BLOCK_M=bm, BLOCK_N=bn, **meta, **kw)
        return

    def grid(meta_):
        return (triton.cdiv(seq_q, meta_["BLOCK_M"]), heads, batch)

    _attn_fwd_tuned[grid](*args, **meta)


def attention_fwd(
    q,
    k,
    v,
    key_padding_mask=None,
    causal=False,
    scale=None,
    *,
    allow_tf32=False,
    block_m=None,
    block_n=None,
    num_warps=None,
    num_stages=None,
):
    """softmax(q k^T * scale + mask) v, fused.

    q: (batch, heads, seq_q, head_dim); k, v: (batch, heads, seq_k, head_dim), any strides;
    key_padding_mask: bool (batch, seq_k), True = attend, or None;
    causal: query i attends keys j <= i (top-left, as SDPA's ``is_causal``);
    scale: defaults to head_dim ** -0.5.
    allow_tf32: let fp32 inputs use TF32 tensor cores (GPU only; default exact IEEE fp32).
    block_m, block_n: fixed tile sizes (powers of two >= 16) instead of autotuning;
    num_warps, num_stages: that fixed tile's launch settings (default: 4 warps up to
    block_m 64 else 8, 2 stages). A fixed tile with the settings of one of the autotuner's
    configs compiles the same kernel, so it can warm Triton's cache ahead of tuning.
    Returns (batch, heads, seq_q, head_dim) in q.dtype; rows with no attended key are 0.
    """
    _check(q, k, v, key_padding_mask)
    _check_offsets("attention_fwd", q.shape[2], k.shape[2], (("q", q, 2), ("k", k, 2), ("v", v, 2)), q.shape[3])
    _check_launch("attention_fwd", block_m, block_n, num_warps, num_stages)
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    out = torch.empty((batch, heads, seq_q, head_dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if seq_k == 0:
        return out.zero_()
    if scale is None:
        scale = head_dim**-0.5
    qk_scale = float(scale) * math.log2(math.e)

    if key_padding_mask is not None:
        mask_u8 = key_padding_mask.view(torch.uint8)
        idx = torch.arange(seq_k, device=q.device, dtype=torch.int32)
        # first attended key (seq_k if none) and one past the last (0 if none): no host sync
        kv_start = torch.where(key_padding_mask, idx, seq_k).amin(dim=-1).to(torch.int32)
        kv_end = torch.where(key_padding_mask, idx + 1, 0).amax(dim=-1).to(torch.int32)
        stride_mb, stride_mn = mask_u8.stride()
    else:
        mask_u8 = kv_start = kv_end = q  # never read (HAS_MASK=False)
        stride_mb = stride_mn = 0

    # exact fp32 unless allowed otherwise; fp16/bf16 (and tf32) take the backend default
    input_precision = "ieee" if (q.dtype == torch.float32 and not (allow_tf32 and not INTERPRET)) else None
    block_d = max(16, triton.next_power_of_2(head_dim))
    args = (
        q,
        k,
        v,
        out,
        mask_u8,
        kv_start,
        kv_end,
        q,
        q,
        q,
        q,  # (no cu_seqlens: never read)
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        stride_mb,
        stride_mn,
        seq_q,
        seq_k,
        head_dim,
        qk_scale,
        _bucket(seq_q),
        _bucket(seq_k),
    )
    meta = dict(
        IS_CAUSAL=bool(causal),
        HAS_MASK=key_padding_mask is not None,
        INPUT_PRECISION=input_precision,
        BLOCK_D=block_d,
        UPCAST_DOT=INTERPRET and q.dtype == torch.bfloat16,
    )

    _run("attention_fwd", args, meta, (seq_q, heads, batch), block_m, block_n, num_warps, num_stages)
    return out


def attention_varlen_fwd(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    causal=False,
    scale=None,
    seqused_q=None,
    seqused_k=None,
    *,
    allow_tf32=False,
    block_m=None,
    block_n=None,
    num_warps=None,
    num_stages=None,
):
    """Variable-length (padding-free) attention over packed tokens, flash-attention's layout.

    q: (total_q, heads, head_dim); k, v: (total_k, heads, head_dim), any token/head strides;
    cu_seqlens_q/k: int32 (batch + 1), sequence b is rows [cu[b], cu[b+1]); seqused_q/k:
    int32 (batch) or None, only the first seqused[b] rows of sequence b are used;
    max_seqlen_q/k: the longest (used) sequence (the grid). causal: top-left per sequence.
    Returns (total_q, heads, head_dim) in q.dtype; rows outside every used range are 0.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(
                f"attention_varlen_fwd: {name} must be a 3-D tensor (total, heads, head_dim), "
                f"got {getattr(t, 'shape', type(t))}"
            )
    # the checks of the padded kernel, on (1, heads, total, head_dim) views
    _check(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], None)
    _check_launch("attention_varlen_fwd", block_m, block_n, num_warps, num_stages)
    for name, t, n in (
        ("cu_seqlens_q", cu_seqlens_q, None),
        ("cu_seqlens_k", cu_seqlens_k, None),
        ("seqused_q", seqused_q, cu_seqlens_q.numel() - 1),
        ("seqused_k", seqused_k, cu_seqlens_q.numel() - 1),
    ):
        if t is None and name.startswith("seqused"):
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.int32 or t.device != q.device:
            raise ValueError(f"attention_varlen_fwd: {name} must be a 1-D int32 tensor on {q.device}")
        if n is not None and t.numel() != n:
            raise ValueError(f"attention_varlen_fwd: {name} must have {n} entries, got {t.numel()}")
    if cu_seqlens_k.numel() != cu_seqlens_q.numel():
        raise ValueError("attention_varlen_fwd: cu_seqlens_q and cu_seqlens_k must have batch + 1 entries each")
    total_q, heads, head_dim = q.shape
    batch = cu_seqlens_q.numel() - 1
    if batch > 65535:  # the grid's third axis (the padded form says so for its batch)
        raise ValueError(f"attention_varlen_fwd: {batch} sequences in one call; at most 65535")
    longest_k = int(max_seqlen_k) if max_seqlen_k is not None else k.shape[0]
    parts = (("q", q, 0), ("k", k, 0), ("v", v, 0))
    _check_offsets("attention_varlen_fwd", int(max_seqlen_q), longest_k, parts, heads * head_dim)
    out = torch.zeros((total_q, heads, head_dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0 or batch == 0 or max_seqlen_q <= 0:
        return out
    if scale is None:
        scale = head_dim**-0.5
    qk_scale = float(scale) * math.log2(math.e)
    input_precision = "ieee" if (q.dtype == torch.float32 and not (allow_tf32 and not INTERPRET)) else None
    block_d = max(16, triton.next_power_of_2(head_dim))
    cu_q, cu_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    used_q = seqused_q.contiguous() if seqused_q is not None else cu_q
    used_k = seqused_k.contiguous() if seqused_k is not None else cu_k
    args = (
        q,
        k,
        v,
        out,
        q,
        q,
        q,
        cu_q,
        cu_k,
        used_q,
        used_k,  # (no key mask: never read)
        0,
        q.stride(1),
        q.stride(0),
        q.stride(2),
        0,
        k.stride(1),
        k.stride(0),
        k.stride(2),
        0,
        v.stride(1),
        v.stride(0),
        v.stride(2),
        0,
        out.stride(1),
        out.stride(0),
        out.stride(2),
        0,
        0,
        int(max_seqlen_q),
        max(int(max_seqlen_k), 1),
        head_dim,
        qk_scale,
        _bucket(int(max_seqlen_q)),
        _bucket(int(max_seqlen_k)),
    )
    meta = dict(
        IS_CAUSAL=bool(causal),
        HAS_MASK=False,
        INPUT_PRECISION=input_precision,
        BLOCK_D=block_d,
        UPCAST_DOT=INTERPRET and q.dtype == torch.bfloat16,
        VARLEN=True,
        USED_Q=seqused_q is not None,
        USED_K=seqused_k is not None,
    )
    _run("attention_varlen_fwd", args, meta, (int(max_seqlen_q), heads, batch), block_m, block_n, num_warps, num_stages)
    return out
