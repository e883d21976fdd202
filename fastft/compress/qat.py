"""Quantization-aware training: simulate, in torch, exactly the INT8 that ONNX Runtime runs.

    with fake_quant(student, QatSpec.from_recipe(recipe)):
        ...train...                       # every encoder Linear sees INT8-rounded inputs and weights

What ORT's dynamic INT8 (``quantize_dynamic``, QOperator: DynamicQuantizeLinear + MatMulInteger /
QAttention) computes for a weight MatMul ``y = x @ W + b``, reproduced here with a
straight-through estimator (the rounding is the identity in the backward pass):

* activations: per tensor, uint8, asymmetric, over the whole input tensor at run time
  (DynamicQuantizeLinear: range ``[min(0, min x), max(0, max x)]``, ``scale = range / 255``,
  ``zero_point = round(-min / scale)`` clipped to [0, 255], round half to even). fastft serves
  such a graph one text per call (:attr:`fastft.runtime.base.Predictor.isolated`), so the tensor
  ORT sees is one text without padding: here the range is taken per row of the batch over its
  unmasked tokens (the ``attention_mask`` the model is called with), which is that call's range;
* weights: int8 symmetric (``scale = max|w| / qmax``, zero point 0), per output channel when the
  recipe is per-channel, 7-bit (``qmax = 64``, ORT's ``reduce_range``) where the recipe uses it,
  else ``qmax = 127``; uint8 weights: asymmetric like the activations (``qmax`` 255 or 127);
* the product is exact in int32 and rescaled once, so ``dequant(x) @ dequant(W) + b`` is the same
  number up to fp32 rounding (checked against ORT in tests/test_qat.py);
* with 8-bit embeddings (QEmbedLayerNormalization): the word, position and token-type tables and
  the embedding LayerNorm's gamma/beta, each uint8 asymmetric per tensor.

Which Linears: the ones fastft's INT8 quantises (:func:`fastft.export.quantize.select_nodes`, scope
``weights``): the query/key/value projections (one QAttention), the attention output, the FFN
intermediate and output denses of every encoder layer. The pooler and classifier (Gemm) stay fp32.

The fake-quant module is the Linear itself with its class swapped to :class:`FakeQuantLinear`
(a subclass): parameters, state_dict keys and optimizer state are untouched, so the best-epoch
bookkeeping and saving work unchanged; leaving the context restores ``nn.Linear``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from fastft.models.pruned import BERT_LAYER_LINEARS, encoder_layers, layer_linear


@dataclass(frozen=True)
class QatSpec:
    """What to simulate: weight type/range/granularity; activations are always dynamic uint8, one
    range per text (its call's tensor as served)."""

    weight_type: str = "int8"  # int8 (symmetric) or uint8 (asymmetric)
    per_channel: bool = True
    reduce_range: bool = False
    embeddings: bool = False
    epochs: int = 1  # the last this many epochs of a distillation/recovery run are quantization-aware
    # weight of a term pulling the simulated INT8 outputs toward the same weights' fp32 outputs
    # (T^2 KL at the distillation temperature; the fp32 pass without gradient, same dropout masks)
    consistency: float = 0.0

    @classmethod
    def from_recipe(cls, recipe, epochs: int = 1, consistency: float = 0.0) -> QatSpec:
        """The spec for a :class:`fastft.export.quantize.Int8Recipe` (dynamic mode)."""
        return cls(
            weight_type=recipe.weight_type,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            embeddings=bool(recipe.embeddings) and recipe.quant_format.lower() == "qoperator",
            epochs=epochs,
            consistency=consistency,
        )

    def to_dict(self) -> dict:
        return {
            "weights": f"{self.weight_type} {'symmetric' if self.weight_type == 'int8' else 'asymmetric'}, "
            f"{'per-channel' if self.per_channel else 'per-tensor'}"
            f"{', 7-bit (reduce_range)' if self.reduce_range else ''}",
            "activations": "uint8 asymmetric, dynamic (DynamicQuantizeLinear), one range per text over its "
            "tokens (as served: one text per call)",
            "embeddings": "tables and LayerNorm uint8 asymmetric per tensor" if self.embeddings else "fp32",
            "estimator": "straight-through",
            **({"consistency": self.consistency} if self.consistency else {}),
        }


def _ste(x, q):
    """``q`` in the forward pass, the identity's gradient in the backward pass."""
    return x + (q - x).detach()


def fake_quant_activation(x, of=None, mask=None):
    """DynamicQuantizeLinear then dequantize: uint8, asymmetric, per tensor (ORT's rule).

    ``mask``: a (batch, seq) attention mask for ``x`` of shape (batch, seq, ...): one range per
    row over its unmasked positions, what each text gets when it runs alone (padded positions are
    rounded on their row's scale; nothing reads them).

    ``of``: the tensor whose range sets the scale, ``x`` itself by default. An embedding passes its
    whole table and ``x`` = the rows looked up: the rounding is elementwise, so that is the rounded
    table's rows, bit for bit, without rounding the 30k rows a batch does not use (the default's
    quantization-aware recovery epoch took 244-266 s before, 113-162 s after: bench/results/
    compress_seed4{2,3,4}_default_vnni.json against *_default_fused_vnni.json, which also changed
    the optimizer).
    """
    import torch

    with torch.no_grad():
        if mask is not None and of is None and x.dim() >= 2 and tuple(x.shape[:2]) == tuple(mask.shape):
            valid = mask.bool().reshape(*mask.shape, *([1] * (x.dim() - 2)))
            dims = tuple(range(1, x.dim()))
            lo = torch.where(valid, x, torch.inf).amin(dim=dims, keepdim=True)
            hi = torch.where(valid, x, -torch.inf).amax(dim=dims, keepdim=True)
        else:
            lo, hi = torch.aminmax(x if of is None else of)
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)  # a row with no token: 0, 0
        scale = (hi - lo) / 255.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.clamp(torch.round(-lo / scale), 0, 255)
        q = (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale
    return _ste(x, q)


def weight_qrange(spec: QatSpec) -> tuple[int, int]:
    """(qmin, qmax) of ORT's weight quantisation for ``spec`` (quant_utils.get_qmin_qmax_for_qType)."""
    if spec.weight_type == "int8":
        return (-64, 64) if spec.reduce_range else (-127, 127)
    return (0, 127) if spec.reduce_range else (0, 255)


def fake_quant_weight(w, spec: QatSpec):
    """Quantize-dequantize a torch Linear weight ``(out, in)``; channels are its rows (ONNX: columns)."""
    import torch

    qmin, qmax = weight_qrange(spec)
    with torch.no_grad():
        if spec.per_channel:
            lo, hi = torch.aminmax(w, dim=1, keepdim=True)
        else:
            lo, hi = torch.aminmax(w)
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        if spec.weight_type == "int8":  # symmetric, zero point 0
            absmax = torch.maximum(-lo, hi)
            scale = 2 * absmax / (qmax - qmin)
            zp = torch.zeros_like(scale)
        else:
            scale = (hi - lo) / (qmax - qmin)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = (torch.clamp(torch.round(w / scale) + zp, qmin, qmax) - zp) * scale
    return _ste(w, q)


def _linear_class():
    import torch

    class FakeQuantLinear(torch.nn.Linear):
        """An ``nn.Linear`` whose input and weight are rounded as ORT's INT8 rounds them (STE)."""

        qat_spec: QatSpec
        qat_call = _Call()  # fake_quant gives each model call's own

        def forward(self, x):
            import torch.nn.functional as F

            if not self.qat_call.on:
                return super().forward(x)
            x = fake_quant_activation(x, mask=self.qat_call.mask)
            return F.linear(x, fake_quant_weight(self.weight, self.qat_spec), self.bias)

    class FakeQuantEmbedding(torch.nn.Embedding):
        """An ``nn.Embedding`` whose table is stored uint8 per tensor (QEmbedLayerNormalization)."""

        qat_call = _Call()

        def forward(self, ids):
            import torch.nn.functional as F

            if not self.qat_call.on:
                return super().forward(ids)
            # the rows looked up, rounded on the whole table's scale (the same values and gradient
            # as looking up in the rounded table)
            return fake_quant_activation(F.embedding(ids, self.weight, self.padding_idx), of=self.weight)

    class FakeQuantLayerNorm(torch.nn.LayerNorm):
        """The embedding LayerNorm with gamma and beta stored uint8 per tensor."""

        qat_call = _Call()

        def forward(self, x):
            import torch.nn.functional as F

            if not self.qat_call.on:
                return super().forward(x)
            w = fake_quant_activation(self.weight) if self.weight is not None else None
            b = fake_quant_activation(self.bias) if self.bias is not None else None
            return F.layer_norm(x, self.normalized_shape, w, b, self.eps)

    return {
        torch.nn.Linear: FakeQuantLinear,
        torch.nn.Embedding: FakeQuantEmbedding,
        torch.nn.LayerNorm: FakeQuantLayerNorm,
    }


class _Call:
    """The attention mask of the model call in progress, read by its FakeQuantLinears; ``on``:
    False while :func:`unquantised` runs the same modules in fp32."""

    mask = None
    on = True


def _record_mask(call: _Call, args, kwargs):
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:  # HF order: input_ids, attention_mask, ...
        mask = args[1]
    call.mask = mask if getattr(mask, "dim", lambda: 0)() == 2 else None


_FQ = None


def fake_quant_classes() -> dict:
    """{torch class: its fake-quant subclass}."""
    global _FQ
    if _FQ is None:
        _FQ = _linear_class()
    return _FQ


def embedding_modules(net) -> list:
    """The embedding tables and the embedding LayerNorm (the inputs of EmbedLayerNormalization)."""
    import torch

    emb = None
    for name, m in net.named_modules():
        if name.endswith("embeddings") and hasattr(m, "word_embeddings"):
            emb = m
            break
    if emb is None:
        return []
    out = [m for m in emb.children() if isinstance(m, torch.nn.Embedding)]
    ln = getattr(emb, "LayerNorm", None)
    return out + ([ln] if isinstance(ln, torch.nn.LayerNorm) else [])


def quantized_linears(net) -> list:
    """The encoder Linears fastft's INT8 quantises (QKV, attention output, FFN in/out of each layer)."""
    return [layer_linear(layer, path) for layer in encoder_layers(net) for path in BERT_LAYER_LINEARS]


@contextmanager
def fake_quant(net, spec: QatSpec):
    """Within the block, the :func:`quantized_linears` of ``net`` are FakeQuantLinear (and, with
    ``spec.embeddings``, its :func:`embedding_modules` are fake-quantised too)."""
    classes = fake_quant_classes()
    mods = quantized_linears(net) + (embedding_modules(net) if spec.embeddings else [])
    mods = [m for m in mods if type(m) in classes]  # exact types: nothing swapped twice
    originals = [type(m) for m in mods]
    call = _Call()
    hook = net.register_forward_pre_hook(lambda _m, args, kwargs: _record_mask(call, args, kwargs), with_kwargs=True)
    for m in mods:
        m.__class__ = classes[type(m)]
        m.qat_spec = spec
        m.qat_call = call
    try:
        yield mods
    finally:
        hook.remove()
        for m, cls in zip(mods, originals):
            m.__class__ = cls
            del m.qat_spec, m.qat_call


@contextmanager
def unquantised(mods):
    """Within the block the fake-quant modules ``mods`` (what :func:`fake_quant` or :func:`attach`
    returned) compute in fp32: the same weights as the model they simulate INT8 in."""
    calls = list({id(m.qat_call): m.qat_call for m in mods}.values())
    for c in calls:
        c.on = False
    try:
        yield
    finally:
        for c in calls:
            c.on = True


def attach(net, spec: QatSpec) -> list:
    """Swap in FakeQuantLinear until :func:`detach` (for training loops that cannot hold a ``with``)."""
    cm = fake_quant(net, spec)
    mods = cm.__enter__()
    net._fastft_qat = cm
    return mods


def detach(net) -> None:
    cm = getattr(net, "_fastft_qat", None)
    if cm is not None:
        cm.__exit__(None, None, None)
        del net._fastft_qat
