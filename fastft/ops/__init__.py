"""fastft.ops: the fused attention op and its variable-length form (schema, reference,
per-device dispatch)."""

from fastft.ops.attention import (
    MAX_HEAD_DIM,
    SUPPORTED_DTYPES,
    attention_ref,
    cpu_backend,
    fused_attention,
)
from fastft.ops.attention_varlen import attention_varlen_ref, fused_attention_varlen

__all__ = [
    "fused_attention",
    "fused_attention_varlen",
    "attention_ref",
    "attention_varlen_ref",
    "cpu_backend",
    "MAX_HEAD_DIM",
    "SUPPORTED_DTYPES",
]
