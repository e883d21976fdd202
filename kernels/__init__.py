"""Triton kernels of fastft, installed as ``fastft.kernels``.

    attention   fused attention forward, FlashAttention-2 style (``attention_fwd``);
                used by ``fastft.ops.fused_attention`` on CUDA

Importing this package never imports Triton; the kernel modules do, lazily.
Set ``TRITON_INTERPRET=1`` before triton is imported to run them on CPU tensors.
"""
