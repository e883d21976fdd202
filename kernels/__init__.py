"""Triton kernels of fastft, installed as ``fastft.kernels``.

Importing this package never imports Triton; the kernel modules do, lazily.
"""
