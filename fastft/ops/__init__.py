"""fastft.ops: the fused attention op (schema, reference, per-device dispatch)."""

from fastft.ops.attention import (
    MAX_HEAD_DIM,
    SUPPORTED_DTYPES,
    attention_ref,
    cpu_backend,
    fused_attention,
)

__all__ = ["fused_attention", "attention_ref", "cpu_backend", "MAX_HEAD_DIM", "SUPPORTED_DTYPES"]
