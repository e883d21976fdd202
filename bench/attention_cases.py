"""The attention cases of bench/bench_attention.py: inputs and the CPU backends it times.

Every backend computes the same attention over the same (batch, heads, seq, head_dim) fp32
tensors: fastft's C++ kernel (default SIMD path, AVX2 forced, padding-free varlen form),
torch SDPA (padded, and on the valid tokens alone) and eager matmul-softmax-matmul.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F


def make_inputs(batch, heads, seq, head_dim, masked, device="cpu", dtype=torch.float32, valid=0.75):
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=gen).to(device, dtype) for _ in range(3))
    mask = None
    if masked:
        mask = torch.zeros(batch, seq, dtype=torch.bool)
        mask[:, : max(1, int(seq * valid))] = True
        mask = mask.to(device)
    return q, k, v, mask


def cpu_backends(q, k, v, mask):
    from fastft.ops import fused_attention

    scale = q.shape[-1] ** -0.5
    attn_bool = mask[:, None, None, :] if mask is not None else None
    additive = None
    if mask is not None:
        additive = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))[:, None, None, :]

    def fastft_default():
        return fused_attention(q, k, v, mask)

    from fastft.ops import fused_attention_varlen

    seq = q.shape[2]
    flat = [t[0].transpose(0, 1) for t in (q, k, v)]  # (seq, heads, d) views of the same memory
    slots = torch.tensor([0, seq], dtype=torch.int32)
    valid = torch.tensor([int(mask[0].sum()) if mask is not None else seq], dtype=torch.int32)
    n_valid = int(valid[0])

    def fastft_varlen():
        return fused_attention_varlen(*flat, slots, slots, seq, seq, seqused_q=valid, seqused_k=valid)

    def sdpa_unpadded():
        return F.scaled_dot_product_attention(q[:, :, :n_valid], k[:, :, :n_valid], v[:, :, :n_valid])

    def fastft_avx2():
        old = os.environ.get("FASTFT_ATTN_ISA")
        os.environ["FASTFT_ATTN_ISA"] = "avx2"
        try:
            return fused_attention(q, k, v, mask)
        finally:
            if old is None:
                del os.environ["FASTFT_ATTN_ISA"]
            else:
                os.environ["FASTFT_ATTN_ISA"] = old

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bool)

    def eager():
        s = torch.matmul(q, k.transpose(-1, -2)) * scale
        if additive is not None:
            s = s + additive
        return torch.matmul(torch.softmax(s, dim=-1), v)

    fns = {"fastft": fastft_default}
    from fastft import _native

    if (
        _native.available()
        and "avx2" in _native._C.attention_isas()
        and _native._C.attention_isa() != "avx2"
        and os.environ.get("FASTFT_ATTN_ISA", "auto") in ("", "auto")
    ):
        fns["fastft_avx2"] = fastft_avx2
    if mask is not None:
        fns["fastft_varlen"] = fastft_varlen
    fns["sdpa"] = sdpa
    if mask is not None:
        fns["sdpa_unpadded"] = sdpa_unpadded
    fns["eager"] = eager
    return fns
