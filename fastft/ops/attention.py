"""The fused attention op: reference, custom-op schema and per-device dispatch.

    out = fused_attention(q, k, v, key_padding_mask=None, causal=False, scale=None)

    q:   (batch, heads, seq_q, head_dim)
    k,v: (batch, heads, seq_k, head_dim)      seq_q may differ from seq_k
    out: (batch, heads, seq_q, head_dim), dtype of q

Semantics: ``softmax(q @ k^T * scale + mask) @ v`` with ``scale = head_dim ** -0.5`` by
default, and:

* ``key_padding_mask``: bool ``(batch, seq_k)``, True = attend (the fast path), or an
  additive float mask broadcastable to ``(batch, 1, 1, seq_k)`` (a 2-D float mask is read as
  ``(batch, seq_k)`` too), added to the scores as is: ``-inf`` masks a key, a finite value
  (e.g. ``finfo.min``) is just a large negative bias.
* ``causal``: torch SDPA's ``is_causal`` convention, aligned top-left: query ``i`` attends
  keys ``j <= i``, also when ``seq_q != seq_k`` (flash-attention aligns bottom-right
  instead; we follow SDPA so the reference matches ``scaled_dot_product_attention``).
* A query row whose every key is masked (score ``-inf``) returns zeros, never NaN.
* A masked key's value never reaches the output, however large (padding left uninitialised,
  1e30, even inf or NaN): its weight is exactly 0, and the Triton kernel does not read it. One
  exception there: Triton multiplies a tile's values by their weights, so under causal an inf
  or NaN value of a key that is future to some rows of its tile turns those rows NaN (finite
  values, however large, are safe everywhere). The C++ kernel gives weight 0 to every
  key scoring more than 100 (log2 units, about 69 nats) below its row's maximum, which covers a
  ``finfo.min`` bias too; the reference's own ``exp`` reaches 0 only at about 103 nats.
* NaN propagates as in IEEE math (the reference's semantics), on every backend: a NaN in
  ``q`` row i (or any NaN score of row i against an attended key) makes output row i NaN;
  other rows are unaffected, and a row whose every key is masked stays zeros. A masked key
  is ignored even where its score is NaN (a bool-masked key, or an additive ``-inf``).
  (torch SDPA has no single contract here: its CPU flash kernel returns zeros for such a
  row without a mask and NaN with one; its math kernel returns NaN. Measured, torch 2.13.)
* Scores beyond float32's range (finite inputs whose ``q k^T * scale`` overflows: q and k
  of 1e20, or scale 1e37) are the reference's too on CPU: the C++ kernel, which scores in
  float32, computes the rows it may have got wrong (a +inf score, a NaN row, or no key left
  where one is attended) again in double from the call's inputs, row by row (slow, exact;
  rows whose scores or values hold inf or NaN take that path too). That is inside the kernel,
  so the ONNX Runtime op has it as well. The Triton kernel does not: there such scores give NaN
  or zero rows.

The variable-length (padding-free) form, flash-attention's packed-tokens layout, is
:func:`fastft.ops.fused_attention_varlen` (``fastft/ops/attention_varlen.py``).

Backends (one custom op ``fastft::fused_attention``, registered per device, with a fake
implementation for torch.compile / torch.export):

* CUDA: the Triton kernel ``fastft.kernels.attention.attention_fwd`` (fp16/bf16/fp32).
  An additive float mask it cannot express (anything but 0 / -inf) and fp64 use the
  reference.
* CPU: the C++ kernel ``fastft._C.attention_fwd_f32`` when built (fp32; fp16/bf16 are
  computed in fp32 and cast back; fp64 uses the reference), else the reference. The SIMD
  copy is picked at run time (``fastft._C.attention_isa()``; ``FASTFT_ATTN_ISA=avx2|
  avx512|generic`` forces one). Threads: ``torch.get_num_threads()``.
* head_dim 1..256 on every backend.

Forward-only kernels: the op's backward recomputes the reference under autograd (correct,
memory-hungry: O(seq_q * seq_k) per head). fastft is an inference library; train with the
model's own attention.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = ["fused_attention", "attention_ref", "cpu_backend", "MAX_HEAD_DIM", "SUPPORTED_DTYPES"]

MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------------------
# mask normalisation and the reference
# ---------------------------------------------------------------------------------------
def _normalize_mask(mask: Tensor | None, batch: int, seq_k: int, q: Tensor) -> Tensor | None:
    """A bool (batch, seq_k) mask, or a float (batch, seq_k) additive bias (fp32; fp64 for
    fp64 inputs), contiguous. Raises ValueError naming ``key_padding_mask``."""
    if mask is None:
        return None
    name = "key_padding_mask"
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.device != q.device:
        raise ValueError(f"{name} is on {mask.device}, q is on {q.device}")
    is_bool = mask.dtype == torch.bool
    if not is_bool and not mask.is_floating_point():
        raise ValueError(f"{name} must be bool (True = attend) or an additive float mask, got {mask.dtype}")
    shape = tuple(mask.shape)
    ok_2d = len(shape) == 2 and shape[0] in (1, batch) and shape[1] == seq_k
    if ok_2d:
        m = mask[:, None, None, :]
    else:
        ok = 1 <= len(shape) <= 4
        if ok:
            padded = (1,) * (4 - len(shape)) + shape
            ok = padded[0] in (1, batch) and padded[1] == 1 and padded[2] == 1 and padded[3] in (1, seq_k)
            ok = ok and (not is_bool or padded[3] == seq_k)
        if not ok:
            raise ValueError(
                f"{name} has shape {shape}; expected (batch, seq_k) = ({batch}, {seq_k})"
                + ("" if is_bool else f" or a shape broadcastable to ({batch}, 1, 1, {seq_k})")
            )
        m = mask.reshape(padded)
    m = m.expand(batch, 1, 1, seq_k).reshape(batch, seq_k)
    if is_bool:
        return m.contiguous()
    return m.to(torch.float64 if q.dtype == torch.float64 else torch.float32).contiguous()


def attention_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    upcast: bool = True,
) -> Tensor:
    """The reference: stable softmax attention with plain torch ops.

    Same arguments and semantics as :func:`fused_attention`. ``upcast=True`` computes in
    float64, ``upcast=False`` in the input dtype (to measure PyTorch's own low-precision
    error); the result is returned in the input dtype.
    """
    _check_inputs(q, k, v)
    causal = _checked_causal(causal)
    scale = _checked_scale(scale, q.shape[3])
    dtype = q.dtype
    ct = torch.float64 if upcast else dtype
    batch, _, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    if seq_k == 0 or seq_q == 0:
        return q.new_zeros(q.shape)
    s = torch.matmul(q.to(ct), k.to(ct).transpose(-1, -2)) * scale
    mask = _normalize_mask(key_padding_mask, batch, seq_k, q)
    if mask is not None:
        if mask.dtype == torch.bool:
            s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
        else:  # an additive -inf masks the key even where the score is NaN, as the kernels do
            add = mask.to(ct)[:, None, None, :]
            s = (s + add).masked_fill(add == float("-inf"), float("-inf"))
    if causal:
        keep = torch.ones(seq_q, seq_k, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max) & (row_max < 0), torch.zeros_like(row_max), row_max)
    p = torch.exp(s - row_max)  # a fully masked row: exp(-inf) = 0 everywhere
    denom = p.sum(dim=-1, keepdim=True)
    out = _weighted_values(p, v.to(ct)) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return out.to(dtype)


def _weighted_values(p: Tensor, v: Tensor) -> Tensor:
    """``p @ v`` where a key of weight 0 (masked, in the future under causal, a finfo.min bias)
    adds nothing even when its value is inf or NaN (0 * inf is NaN in the plain product); keys of
    weight > 0 carry their inf or NaN into the row as IEEE math does. No branch on the data (it
    traces as it runs): the finite part is one product, and which rows an attended +inf, -inf or
    NaN reaches one more, of counts in float32 (exact far past any sequence length)."""
    finite = torch.isfinite(v)
    out = torch.matmul(p, torch.where(finite, v, torch.zeros_like(v)))
    kinds = torch.cat((v == float("inf"), v == float("-inf"), v.isnan()), dim=-1).to(torch.float32)
    reached = torch.matmul((p > 0).to(torch.float32), kinds) > 0
    pos, neg, nan = reached.chunk(3, dim=-1)
    out = torch.where(pos, torch.full_like(out, float("inf")), out)
    out = torch.where(neg, torch.full_like(out, float("-inf")), out)
    return torch.where(nan | (pos & neg), torch.full_like(out, float("nan")), out)


# ---------------------------------------------------------------------------------------
# the custom op and its per-device kernels
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("fastft::fused_attention", mutates_args=())
def _fused_attention_op(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float) -> Tensor:
    """Devices without a kernel of their own: the reference (computed in float64)."""
    return attention_ref(q, k, v, mask, causal, scale).contiguous()


@_fused_attention_op.register_fake
def _fused_attention_fake(q, k, v, mask, causal, scale):
    return q.new_empty(q.shape)


def _cpp():
    """fastft._C if it is built and has the attention kernel, else None (read per call so a
    test can switch the native library off)."""
    from fastft import _native

    c = _native._C
    return c if c is not None and hasattr(c, "attention_fwd_f32") else None


def _isa() -> str:
    """The C++ kernels' instruction-set copy to run: FASTFT_ATTN_ISA, checked, or ``auto``."""
    from fastft import _native

    return _native.forced_isa()


def cpu_backend() -> str:
    """What the CPU path runs: ``"cpp:<isa>"`` or ``"reference"``."""
    c = _cpp()
    if c is None:
        return "reference"
    isa = _isa()
    return f"cpp:{c.attention_isa() if isa == 'auto' else isa}"


def _check_op_args(q, k, v, mask) -> None:
    """The checks the C++ kernel's raw pointers rely on, made again where the op itself runs: a
    compiled graph or an exported program calls the op directly, past the public wrapper."""
    _check_inputs(q, k, v)
    if mask is not None and (
        mask.dim() != 2
        or tuple(mask.shape) != (q.shape[0], k.shape[2])
        or not mask.is_contiguous()
        or mask.dtype not in (torch.bool, torch.float32, torch.float64)
    ):
        raise ValueError(
            f"mask must be a contiguous bool or float (batch, seq_k) = ({q.shape[0]}, {k.shape[2]}) tensor, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


@_fused_attention_op.register_kernel("cpu")
def _fused_attention_cpu(q, k, v, mask, causal, scale):
    c = _cpp()
    if c is None or q.dtype == torch.float64:
        return attention_ref(q, k, v, mask, causal, scale).contiguous()
    _check_op_args(q, k, v, mask)
    qf, kf, vf = (
        t if t.dtype is torch.float32 and t.is_contiguous() else t.to(torch.float32).contiguous() for t in (q, k, v)
    )
    out = torch.empty_like(qf)  # fp32, contiguous (qf is)
    mask_ptr = bias_ptr = 0
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = mask.contiguous()
            mask_ptr = mask.data_ptr()
        else:
            mask = mask.to(torch.float32).contiguous()
            bias_ptr = mask.data_ptr()
    batch, heads, seq_q, head_dim = q.shape
    c.attention_fwd_f32(  # True when rows were computed again in double (scores past float32)
        qf.data_ptr(),
        kf.data_ptr(),
        vf.data_ptr(),
        mask_ptr,
        bias_ptr,
        out.data_ptr(),
        batch,
        heads,
        seq_q,
        k.shape[2],
        head_dim,
        bool(causal),
        float(scale),
        torch.get_num_threads(),
        _isa(),
    )
    return out if q.dtype == torch.float32 else out.to(q.dtype)


@_fused_attention_op.register_kernel("cuda")
def _fused_attention_cuda(q, k, v, mask, causal, scale):
    if q.dtype not in _TRITON_DTYPES:
        return attention_ref(q, k, v, mask, causal, scale).contiguous()
    if mask is not None and mask.dtype != torch.bool:
        # the Triton kernel takes a bool mask; an additive mask of only 0 / -inf is one
        if not bool(((mask == 0) | (mask == float("-inf"))).all()):
            return attention_ref(q, k, v, mask, causal, scale).contiguous()
        mask = mask == 0
    from fastft.kernels.attention import attention_fwd

    with torch.cuda.device(q.device):  # Triton launches on the current device, not q's
        return attention_fwd(q, k, v, key_padding_mask=mask, causal=causal, scale=scale).contiguous()


def _setup_context(ctx, inputs, output):
    q, k, v, mask, causal, scale = inputs
    ctx.save_for_backward(q, k, v, mask)
    ctx.causal, ctx.scale = causal, scale


def _backward(ctx, grad_out):
    """Recompute the reference under autograd (forward-only kernels)."""
    q, k, v, mask = ctx.saved_tensors
    with torch.enable_grad():
        qd, kd, vd = (t.detach().requires_grad_(True) for t in (q, k, v))
        out = attention_ref(qd, kd, vd, mask, ctx.causal, ctx.scale)
        gq, gk, gv = torch.autograd.grad(out, (qd, kd, vd), grad_out)
    return gq, gk, gv, None, None, None


_fused_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _intercepted() -> bool:
    """Whether a torch function mode, a dispatch mode or a functorch transform is active (probed
    through torch's own switches; a torch without one of them counts as intercepted, so the op
    then runs as registered)."""
    try:
        return bool(
            torch._C._is_torch_function_mode_enabled()
            or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._are_functorch_transforms_active()
        )
    except AttributeError:
        return True


def eager_cpu(*tensors: Tensor | None) -> bool:
    """True when a call may skip the custom op's dispatch and run its CPU kernel directly: plain
    CPU tensors, no autograd to record, and nothing that traces or intercepts ops
    (torch.compile / torch.export / jit tracing, torch function or dispatch modes, functorch
    transforms). Otherwise the op runs, and is seen, as registered.

    Alone, the dispatch costs about 0.1 ms a call; interleaved with other torch work on two
    cores, a (1, 12, 512, 32) call through the op was measured at about twice the wall time of
    the direct call (bench/results/attention_cpu_avx2_s512_before*.json against _after3.json;
    the cause was not found)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or _intercepted():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) is not Tensor or t.device.type != "cpu" or (grad and t.requires_grad)):
            return False
    return True


# ---------------------------------------------------------------------------------------
# the public wrapper: validation and normalisation
# ---------------------------------------------------------------------------------------
def check_qkv(q, k, v, layout: str) -> None:
    """q, k, v are tensors of ``layout``'s rank, one supported dtype and one device (ValueError naming
    the argument); ``layout`` names the axes, e.g. "(batch, heads, seq, head_dim)"."""
    ndim = layout.count(",") + 1
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != ndim:
            raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32, float64")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but q has {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")


# the kernels scale q by scale * log2(e) in float32: beyond this the product is inf
MAX_SCALE = torch.finfo(torch.float32).max / math.log2(math.e) / 2


def _checked_causal(causal) -> bool:
    try:
        ok = not isinstance(causal, (str, bytes)) and causal in (True, False)
    except (TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise ValueError(f"causal must be a bool, got {causal!r}")
    return bool(causal)


def _checked_scale(scale, head_dim: int) -> float:
    """``scale`` as a float (head_dim ** -0.5 when None); ValueError unless finite and within
    what the kernels' float32 arithmetic holds."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    if abs(scale) > MAX_SCALE:
        raise ValueError(f"scale must be at most {MAX_SCALE:.3g} in magnitude (float32 arithmetic), got {scale!r}")
    return float(scale)


def _check_inputs(q, k, v) -> None:
    check_qkv(q, k, v, "(batch, heads, seq, head_dim)")
    if k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"k has shape {tuple(k.shape)}; expected (batch, heads, seq_k, head_dim) = "
            f"({q.shape[0]}, {q.shape[1]}, seq_k, {q.shape[3]}) to match q {tuple(q.shape)}"
        )
    if v.shape != k.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected the shape of k {tuple(k.shape)}")
    head_dim = q.shape[3]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"q has head_dim {head_dim}; supported head_dim: 1..{MAX_HEAD_DIM}")


def _checked_args(q, k, v, key_padding_mask, causal, scale):
    """(causal, scale, mask) checked and normalised (ValueError naming the argument). Under
    ``torch.jit.trace`` (``torch.onnx.export``'s legacy exporter) sizes are traced values and each
    comparison printed a TracerWarning: the checks hold for the traced inputs and steer no data,
    so there their warnings are not shown (no context manager on the eager path)."""
    if torch.jit.is_tracing():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return _normalized_args(q, k, v, key_padding_mask, causal, scale)
    return _normalized_args(q, k, v, key_padding_mask, causal, scale)


def _normalized_args(q, k, v, key_padding_mask, causal, scale):
    _check_inputs(q, k, v)
    causal = _checked_causal(causal)
    scale = _checked_scale(scale, q.shape[3])
    return causal, scale, _normalize_mask(key_padding_mask, q.shape[0], k.shape[2], q)


def fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """softmax(q k^T * scale + mask) v, fused (see the module docstring for semantics).

    q: (batch, heads, seq_q, head_dim); k, v: (batch, heads, seq_k, head_dim), same dtype
    (fp16, bf16, fp32, fp64) and device. key_padding_mask: bool (batch, seq_k), True =
    attend, or an additive float mask broadcastable to (batch, 1, 1, seq_k). causal: query
    i attends keys j <= i (top-left, as SDPA). scale: default head_dim ** -0.5.
    Returns (batch, heads, seq_q, head_dim) in q's dtype. Raises ValueError naming the
    offending argument.
    """
    causal, scale, mask = _checked_args(q, k, v, key_padding_mask, causal, scale)
    if (
        isinstance(key_padding_mask, Tensor)
        and key_padding_mask.requires_grad
        and torch.is_grad_enabled()
        and key_padding_mask.is_floating_point()
    ):
        raise ValueError(
            "key_padding_mask requires grad, and fused_attention gives a mask no gradient; learn a bias "
            "with attention_ref or torch's scaled_dot_product_attention"
        )
    if eager_cpu(q, k, v, mask):
        return _fused_attention_cpu(q, k, v, mask, causal, float(scale))
    return _fused_attention_op(q, k, v, mask, causal, float(scale))
