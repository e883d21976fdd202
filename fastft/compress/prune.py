"""Structured pruning of BERT-style encoders: attention heads and FFN neurons, removed for real.

Importance is measured on training batches with gradients (Michel et al. 2019 for heads;
first-order Taylor for FFN neurons): a gate of ones multiplies each head's context vector
(the input of ``attention.output.dense``) and each intermediate activation (the input of
``output.dense``), and ``|d loss / d gate|``, summed over batches, is the importance. For an
FFN neuron that gradient is ``sum_tokens act * grad``, the Taylor criterion.

The same number of heads and neurons is removed from every layer, so ``intermediate_size``
stays uniform and the config describes the shrunk shapes. Linear layers are sliced
(``query/key/value`` rows, ``attention.output.dense`` columns; ``intermediate.dense`` rows,
``output.dense`` columns): parameters and FLOPs drop.

Reloading: FFN pruning changes only ``intermediate_size``, so the directory loads with plain
``transformers``. Transformers 5 dropped ``prune_heads``/``config.pruned_heads`` for BERT, so a
head-pruned directory records ``pruned_heads`` in config.json and loads with
:func:`load_pruned` (which rebuilds the shapes, then loads the weights); its ONNX files
are ordinary.
"""

from __future__ import annotations

from fastft.core.checks import arg, check_float
from fastft.core.errors import FastftError
from fastft.models.pruned import (
    count_params,
    describe,
    encoder_layers,
    flops,
    heads_of,
    load_pruned,
    prune_layer_ffn,
    prune_layer_heads,
)

__all__ = [
    "apply_structured",
    "check_fractions",
    "global_head_choice",
    "count_params",
    "describe",
    "flops",
    "importance",
    "load_pruned",
    "magnitude_prune",
    "prune_at_random",
    "prune_layer_ffn",
    "prune_layer_heads",
]


def check_fractions(model, prune_heads: float, prune_ffn: float) -> tuple[int, int]:
    """(heads removed per layer, neurons removed per layer); FastftError if a layer would be emptied."""
    layers = encoder_layers(model)
    n_heads = heads_of(layers[0])
    n_ffn = layers[0].intermediate.dense.out_features
    for name, v in (("prune_heads", prune_heads), ("prune_ffn", prune_ffn)):
        check_float(arg(name), v, lo=0, hi=1, hi_open=True)  # as PruneConfig checks them
    k_heads = int(round(prune_heads * n_heads))
    k_ffn = int(round(prune_ffn * n_ffn))
    if k_heads >= n_heads:
        raise FastftError(f"{arg('prune_heads')} {prune_heads} would remove all {n_heads} heads of a layer")
    if k_ffn >= n_ffn:
        raise FastftError(f"{arg('prune_ffn')} {prune_ffn} would remove all {n_ffn} FFN neurons of a layer")
    # the same count goes from every layer: an already pruned model's smaller layers must keep some
    fewest_heads = min(heads_of(layer) for layer in layers)
    fewest_ffn = min(layer.intermediate.dense.out_features for layer in layers)
    if k_heads >= fewest_heads:
        raise FastftError(
            f"{arg('prune_heads')} {prune_heads} removes {k_heads} heads from every layer, and a layer of this model "
            f"has {fewest_heads} left (it was pruned before): that layer would be emptied"
        )
    if k_ffn >= fewest_ffn:
        raise FastftError(
            f"{arg('prune_ffn')} {prune_ffn} removes {k_ffn} FFN neurons from every layer, and a layer of this model "
            f"has {fewest_ffn} left: that layer would be emptied"
        )
    return k_heads, k_ffn


def importance(model, batches, loss_fn, heads: bool = True, ffn: bool = True) -> dict:
    """Gradient importance of every head and FFN neuron.

    batches: iterable of batch objects; loss_fn(model, batch) -> scalar loss.
    Returns {"heads": [tensor(n_heads)] per layer, "ffn": [tensor(intermediate)] per layer}.
    """
    import torch

    layers = encoder_layers(model)
    gates, hooks = {"heads": [], "ffn": []}, []
    for layer in layers:
        d = layer.attention.self.attention_head_size
        hg = torch.ones(heads_of(layer), requires_grad=True)
        fg = torch.ones(layer.intermediate.dense.out_features, requires_grad=True)
        gates["heads"].append(hg)
        gates["ffn"].append(fg)
        if heads:
            hooks.append(
                layer.attention.output.dense.register_forward_pre_hook(
                    lambda m, args, g=hg, d=d: (args[0] * g.repeat_interleave(d),)
                )
            )
        if ffn:
            hooks.append(layer.output.dense.register_forward_pre_hook(lambda m, args, g=fg: (args[0] * g,)))
    scores = {
        "heads": [torch.zeros_like(g) for g in gates["heads"]],
        "ffn": [torch.zeros_like(g) for g in gates["ffn"]],
    }
    was_training = model.training
    model.eval()  # no dropout: importance of the model as it will run
    try:
        for batch in batches:
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, gates["heads"] + gates["ffn"], allow_unused=True)
            n = len(layers)
            for i in range(n):
                if grads[i] is not None:
                    scores["heads"][i] += grads[i].abs()
                if grads[n + i] is not None:
                    scores["ffn"][i] += grads[n + i].abs()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    # Michel et al.: normalise head importance per layer (L2) so layers are comparable
    scores["heads"] = [s / (s.norm() + 1e-12) for s in scores["heads"]]
    return scores


def global_head_choice(scores: list, k_total: int) -> list[list[int]]:
    """The ``k_total`` least important heads over all layers (scores normalised per layer, as
    Michel et al. compare them), each layer keeping at least one head: per layer, the indices
    removed (sorted)."""
    flat = sorted((float(s), i, h) for i, layer in enumerate(scores) for h, s in enumerate(layer.tolist()))
    left = [len(x) for x in scores]
    chosen: list[list[int]] = [[] for _ in scores]
    for _, i, h in flat:
        if k_total <= 0:
            break
        if left[i] > 1:
            chosen[i].append(h)
            left[i] -= 1
            k_total -= 1
    if k_total > 0:
        raise FastftError("head pruning would empty a layer: every layer keeps at least one head")
    return [sorted(c) for c in chosen]


def apply_structured(model, scores: dict, k_heads: int, k_ffn: int, global_heads: bool = False) -> dict:
    """Remove the ``k_heads`` least important heads and ``k_ffn`` neurons of every layer.

    global_heads: remove ``k_heads * layers`` heads chosen across all layers instead
    (:func:`global_head_choice`), so the layers keep different numbers of heads.
    Updates the config (``intermediate_size``, ``pruned_heads``) and returns what was removed.
    """
    import torch

    layers = encoder_layers(model)
    pruned = {}
    per_layer = global_head_choice(scores["heads"], k_heads * len(layers)) if k_heads and global_heads else None
    for i, layer in enumerate(layers):
        if k_heads:
            if per_layer is not None:
                heads = per_layer[i]
            else:
                order = torch.argsort(scores["heads"][i])  # least important first
                heads = sorted(int(h) for h in order[:k_heads])
            prune_layer_heads(layer, heads)
            pruned[i] = heads
        if k_ffn:
            n = layer.intermediate.dense.out_features
            keep = torch.sort(torch.argsort(scores["ffn"][i], descending=True)[: n - k_ffn]).values
            prune_layer_ffn(layer, keep)
    cfg = model.config
    if k_ffn:
        cfg.intermediate_size = layers[0].intermediate.dense.out_features
    if k_heads:
        old = {int(k): list(v) for k, v in (getattr(cfg, "pruned_heads", None) or {}).items()}
        for i, heads in pruned.items():
            # indices in the original numbering, as transformers 4 recorded them
            orig = [h for h in range(cfg.num_attention_heads) if h not in set(old.get(i, []))]
            old[i] = sorted(set(old.get(i, [])) | {orig[h] for h in heads})
        cfg.pruned_heads = {str(k): v for k, v in old.items()}
    return {
        "heads_removed_per_layer": k_heads,
        "ffn_removed_per_layer": k_ffn,
        **({"head_allocation": "global"} if k_heads and global_heads else {}),
        "pruned_heads": {str(k): v for k, v in pruned.items()},
    }


def prune_at_random(model, prune_heads: float, prune_ffn: float, seed: int = 0, global_heads: bool = False) -> dict:
    """:func:`apply_structured` with seeded random importance: the pruned *shape* without any data
    (latency does not depend on which heads and neurons go). Returns what was removed."""
    import torch

    k_heads, k_ffn = check_fractions(model, prune_heads, prune_ffn)
    g = torch.Generator().manual_seed(seed)
    layers = encoder_layers(model)
    scores = {
        "heads": [torch.rand(heads_of(x), generator=g) for x in layers],
        "ffn": [torch.rand(x.intermediate.dense.out_features, generator=g) for x in layers],
    }
    return apply_structured(model, scores, k_heads, k_ffn, global_heads=global_heads)


def magnitude_prune(model, sparsity: float) -> dict:
    """Zero the smallest-|w| fraction ``sparsity`` of each encoder Linear weight (unstructured).

    The zeros stay in dense tensors: file size, FLOPs and latency on dense kernels do not drop.
    """
    import torch

    if sparsity <= 0:
        return {"sparsity": 0.0}
    zeros = total = 0
    with torch.no_grad():
        for layer in encoder_layers(model):
            for m in layer.modules():
                if isinstance(m, torch.nn.Linear):
                    w = m.weight
                    k = int(sparsity * w.numel())
                    if k:
                        thr = w.abs().flatten().kthvalue(k).values
                        w.mul_((w.abs() > thr).to(w.dtype))
                    zeros += int((w == 0).sum())
                    total += w.numel()
    return {
        "sparsity": sparsity,
        "encoder_linear_zeros": zeros,
        "encoder_linear_weights": total,
        "measured_sparsity": zeros / max(1, total),
        "note": "unstructured zeros in dense tensors: no speed-up or size drop on dense kernels",
    }
