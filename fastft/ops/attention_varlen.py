"""The variable-length (padding-free) form of the fused attention op.

    out = fused_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                 causal=False, scale=None, seqused_q=None, seqused_k=None)

    q:   (total_q, heads, head_dim)   the tokens of every sequence, one after the other
    k,v: (total_k, heads, head_dim)
    cu_seqlens_q: int32 (batch + 1)   sequence b's queries are q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]
    cu_seqlens_k: int32 (batch + 1)   likewise for k and v
    out: (total_q, heads, head_dim), dtype of q

flash-attention's packed-tokens layout (``flash_attn_varlen_func``): no padding is stored, so
none is computed. Each sequence attends only to its own keys, with the semantics of
:func:`fastft.ops.fused_attention` per sequence (softmax(q k^T * scale) v, scale default
head_dim ** -0.5, ``causal`` top-left aligned as SDPA's ``is_causal``, a query row with no key
returns zeros, a NaN score among a row's keys makes the row NaN).

``seqused_q`` / ``seqused_k`` (int32 (batch), as flash-attention 3): only the first
``seqused[b]`` tokens of sequence b's slot are used. With ``cu_seqlens = [0, S, 2S, ...]``
this runs a right-padded ``(batch, S, heads, head_dim)`` tensor (viewed as ``(batch*S, heads,
head_dim)``) without copying it: padded keys are never read, padded query rows are never
computed. Output rows outside every used range (padding) are zeros.

q, k, v may be strided views (the token and head strides are free; head_dim must be
contiguous), e.g. a ``(batch, seq, heads, head_dim)`` projection viewed as packed tokens.
``max_seqlen_q`` / ``max_seqlen_k`` bound the (used) sequence lengths (the CUDA kernel's grid).

Backends as for ``fused_attention``: CPU the C++ kernel (``attention_varlen_fwd_f32``), else
the reference; CUDA the Triton kernel; fp64 the reference. One custom op
``fastft::fused_attention_varlen`` with a fake implementation (torch.compile / torch.export)
and a backward through the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastft.ops.attention import (
    MAX_HEAD_DIM,
    _checked_causal,
    _checked_scale,
    _cpp,
    _isa,
    attention_ref,
    check_qkv,
    eager_cpu,
)

__all__ = ["fused_attention_varlen", "attention_varlen_ref"]

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _ranges(cu: Tensor, used: Tensor | None) -> list[tuple[int, int]]:
    cu_l = cu.tolist()
    used_l = used.tolist() if used is not None else [cu_l[b + 1] - cu_l[b] for b in range(len(cu_l) - 1)]
    return [(cu_l[b], used_l[b]) for b in range(len(cu_l) - 1)]


def attention_varlen_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int = 0,
    max_seqlen_k: int = 0,
    causal: bool = False,
    scale: float | None = None,
    seqused_q: Tensor | None = None,
    seqused_k: Tensor | None = None,
    upcast: bool = True,
) -> Tensor:
    """The reference: :func:`fastft.ops.attention_ref` on each sequence. Same arguments as
    :func:`fused_attention_varlen` (max_seqlen_* unused); rows outside every sequence are 0."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    out = q.new_zeros(q.shape)
    for (qs, ql), (ks, kl) in zip(_ranges(cu_seqlens_q, seqused_q), _ranges(cu_seqlens_k, seqused_k)):
        if ql == 0:
            continue
        qb = q[qs : qs + ql].transpose(0, 1)[None]  # (1, heads, ql, head_dim)
        kb = k[ks : ks + kl].transpose(0, 1)[None]
        vb = v[ks : ks + kl].transpose(0, 1)[None]
        out[qs : qs + ql] = attention_ref(qb, kb, vb, None, causal, scale, upcast=upcast)[0].transpose(0, 1)
    return out


# ---------------------------------------------------------------------------------------
# the custom op and its per-device kernels
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("fastft::fused_attention_varlen", mutates_args=())
def _varlen_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool,
    scale: float,
    seqused_q: Tensor | None,
    seqused_k: Tensor | None,
) -> Tensor:
    """Devices without a kernel of their own: the reference (computed in float64)."""
    return attention_varlen_ref(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, seqused_q, seqused_k
    ).contiguous()


@_varlen_op.register_fake
def _varlen_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, seqused_q, seqused_k):
    return q.new_empty(q.shape)


def _f32_rows(t: Tensor) -> Tensor:
    """fp32 with a contiguous head_dim (token and head strides kept when they already are)."""
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t if t.stride(-1) == 1 else t.contiguous()


@_varlen_op.register_kernel("cpu")
def _varlen_cpu(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, seqused_q, seqused_k):
    # checked here, where the op runs: the C++ kernel reads raw pointers, and a compiled graph or
    # an exported program calls the op directly, past the public wrapper
    _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q, seqused_k)
    c = _cpp()
    if c is None or not hasattr(c, "attention_varlen_fwd_f32") or q.dtype == torch.float64:
        return attention_varlen_ref(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, seqused_q, seqused_k
        ).contiguous()
    if q.numel() == 0 or k.numel() == 0:  # no rows, no keys or no heads: nothing for the kernel to read
        return torch.zeros(q.shape, dtype=q.dtype)
    qf, kf, vf = _f32_rows(q), _f32_rows(k), _f32_rows(v)
    total_q, heads, head_dim = q.shape
    # rows outside every used range are zeros; when every row is in one, nothing to clear
    full = seqused_q is None and int(cu_seqlens_q[-1]) == total_q and int(cu_seqlens_q[0]) == 0
    out = (torch.empty if full else torch.zeros)(q.shape, dtype=torch.float32)
    cu_q, cu_k = cu_seqlens_q.to(torch.int32).contiguous(), cu_seqlens_k.to(torch.int32).contiguous()
    used_q = seqused_q.to(torch.int32).contiguous() if seqused_q is not None else None
    used_k = seqused_k.to(torch.int32).contiguous() if seqused_k is not None else None
    strides = [
        qf.stride(0),
        qf.stride(1),
        kf.stride(0),
        kf.stride(1),
        vf.stride(0),
        vf.stride(1),
        out.stride(0),
        out.stride(1),
    ]
    c.attention_varlen_fwd_f32(  # True when rows were computed again in double
        qf.data_ptr(),
        kf.data_ptr(),
        vf.data_ptr(),
        out.data_ptr(),
        cu_q.data_ptr(),
        cu_k.data_ptr(),
        used_q.data_ptr() if used_q is not None else 0,
        used_k.data_ptr() if used_k is not None else 0,
        cu_q.numel() - 1,
        heads,
        head_dim,
        strides,
        bool(causal),
        float(scale),
        torch.get_num_threads(),
        _isa(),
    )
    return out if q.dtype == torch.float32 else out.to(q.dtype)


@_varlen_op.register_kernel("cuda")
def _varlen_cuda(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, seqused_q, seqused_k):
    # checked here, as on CPU: the kernel trusts cu_seqlens, seqused and max_seqlen (its grid), and a
    # compiled graph or an exported program calls the op past the public wrapper
    _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q, seqused_k)
    if q.dtype not in _TRITON_DTYPES:
        return attention_varlen_ref(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, seqused_q, seqused_k
        ).contiguous()
    from fastft.kernels.attention import attention_varlen_fwd

    with torch.cuda.device(q.device):  # Triton launches on the current device, not q's
        return attention_varlen_fwd(
            q,
            k,
            v,
            cu_seqlens_q,
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
            causal=causal,
            scale=scale,
            seqused_q=seqused_q,
            seqused_k=seqused_k,
        ).contiguous()


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, used_q, used_k = inputs
    ctx.save_for_backward(q, k, v, cu_q, cu_k, used_q, used_k)
    ctx.causal, ctx.scale = causal, scale


def _backward(ctx, grad_out):
    """Recompute the reference under autograd (forward-only kernels)."""
    q, k, v, cu_q, cu_k, used_q, used_k = ctx.saved_tensors
    with torch.enable_grad():
        qd, kd, vd = (t.detach().requires_grad_(True) for t in (q, k, v))
        out = attention_varlen_ref(qd, kd, vd, cu_q, cu_k, 0, 0, ctx.causal, ctx.scale, used_q, used_k)
        gq, gk, gv = torch.autograd.grad(out, (qd, kd, vd), grad_out, allow_unused=True)
    gq, gk, gv = (torch.zeros_like(t) if g is None else g for g, t in ((gq, q), (gk, k), (gv, v)))
    return gq, gk, gv, None, None, None, None, None, None, None, None


_varlen_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------
# the public wrapper: validation
# ---------------------------------------------------------------------------------------
def _check_shapes(q, k, v) -> None:
    check_qkv(q, k, v, "(total_tokens, heads, head_dim)")
    if k.shape[1:] != q.shape[1:]:
        raise ValueError(
            f"k has shape {tuple(k.shape)}; expected (total_k, heads, head_dim) = "
            f"(total_k, {q.shape[1]}, {q.shape[2]}) to match q {tuple(q.shape)}"
        )
    if v.shape != k.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected the shape of k {tuple(k.shape)}")
    if not 1 <= q.shape[2] <= MAX_HEAD_DIM:
        raise ValueError(f"q has head_dim {q.shape[2]}; supported head_dim: 1..{MAX_HEAD_DIM}")


def _check_varlen(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q, seqused_k, values: bool = True
) -> None:
    """Shapes, and every cu_seqlens / seqused / max_seqlen against the tokens there are
    (``values=False``: their types and shapes only, the op checks the values where it runs)."""
    _check_shapes(q, k, v)
    _check_seqlens(
        "cu_seqlens_q",
        cu_seqlens_q,
        "seqused_q",
        seqused_q,
        q.shape[0],
        max_seqlen_q,
        "max_seqlen_q",
        q.device,
        values,
    )
    if isinstance(cu_seqlens_k, Tensor) and cu_seqlens_k.numel() != cu_seqlens_q.numel():
        raise ValueError(
            f"cu_seqlens_k has {cu_seqlens_k.numel()} entries but cu_seqlens_q has "
            f"{cu_seqlens_q.numel()} (both batch + 1)"
        )
    _check_seqlens(
        "cu_seqlens_k",
        cu_seqlens_k,
        "seqused_k",
        seqused_k,
        k.shape[0],
        max_seqlen_k,
        "max_seqlen_k",
        q.device,
        values,
    )


def _check_seqlens(
    name: str,
    cu: Tensor,
    used_name: str,
    used: Tensor | None,
    total: int,
    max_seqlen: int,
    max_name: str,
    device,
    values: bool = True,
) -> None:
    if not isinstance(cu, Tensor) or cu.dim() != 1 or cu.numel() < 1 or cu.dtype != torch.int32:
        raise ValueError(
            f"{name} must be a 1-D int32 tensor (batch + 1), got "
            f"{getattr(cu, 'dtype', type(cu).__name__)} {tuple(getattr(cu, 'shape', ()))}"
        )
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device}, q is on {device}")
    batch = cu.numel() - 1
    if used is not None:
        if not isinstance(used, Tensor) or used.dim() != 1 or used.numel() != batch or used.dtype != torch.int32:
            raise ValueError(
                f"{used_name} must be None or a 1-D int32 tensor (batch,) = ({batch},), got "
                f"{getattr(used, 'dtype', type(used).__name__)} {tuple(getattr(used, 'shape', ()))}"
            )
        if used.device != device:
            raise ValueError(f"{used_name} is on {used.device}, q is on {device}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int):
        raise ValueError(f"{max_name} must be an int, got {max_seqlen!r}")
    if not values or torch.compiler.is_compiling() or cu.device.type == "meta":
        return  # data checks need real values (the op makes them where it runs)
    c = cu.tolist()
    if c[0] < 0 or any(b < a for a, b in zip(c, c[1:])) or c[-1] > total:
        raise ValueError(
            f"{name} must start at >= 0, be nondecreasing and end at <= {total} (the tokens), "
            f"got {c if len(c) <= 8 else c[:4] + ['...'] + c[-2:]}"
        )
    lengths = [b - a for a, b in zip(c, c[1:])]
    if used is not None:
        u = used.tolist()
        if any(x < 0 or x > n for x, n in zip(u, lengths)):
            raise ValueError(f"{used_name} must be within 0..{name}[b+1]-{name}[b] for every sequence b")
        lengths = u
    longest = max(lengths, default=0)
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < longest:
        raise ValueError(f"{max_name} must be an int >= the longest sequence ({longest}), got {max_seqlen!r}")


def fused_attention_varlen(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    scale: float | None = None,
    seqused_q: Tensor | None = None,
    seqused_k: Tensor | None = None,
) -> Tensor:
    """Padding-free fused attention over packed sequences (see the module docstring).

    q: (total_q, heads, head_dim); k, v: (total_k, heads, head_dim), same dtype (fp16, bf16,
    fp32, fp64) and device, head_dim contiguous. cu_seqlens_q/k: int32 (batch + 1).
    seqused_q/k: int32 (batch) or None. Returns (total_q, heads, head_dim) in q's dtype.
    Raises ValueError naming the offending argument.
    """
    _check_shapes(q, k, v)
    causal = _checked_causal(causal)
    scale = _checked_scale(scale, q.shape[2])
    if eager_cpu(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k):  # the kernel checks the lengths, once
        return _varlen_cpu(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, seqused_q, seqused_k
        )
    # on CUDA the op checks the lengths where it runs (once; a compiled graph calls it past this)
    values = q.device.type != "cuda"
    _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q, seqused_k, values)
    return _varlen_op(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), causal, scale, seqused_q, seqused_k
    )
