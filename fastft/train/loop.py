"""The one optimisation loop of fastft: fine-tuning (:mod:`fastft.train.trainer`) and distillation
(:mod:`fastft.compress.distill`) both run it.

AdamW with weight decay on weights only (:func:`param_groups`), fused where this torch has the
fused kernel for the parameters (:func:`adamw`), linear warm-up and decay
(:func:`linear_schedule`), gradient clipping, a progress bar per epoch, a one-line FastftError
when the loss is not finite, and the best epoch's weights kept by an ``end_epoch`` callback.
Dropout draws its masks cheaply on CPU while the loop runs
(:func:`fastft.swap.training.fast_dropout_training`; ``fast_dropout=False`` keeps torch's).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastft.core.checks import arg
from fastft.core.errors import FastftError


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: none on biases and LayerNorm/embedding-norm parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lname = name.lower()
        if p.ndim < 2 or lname.endswith(".bias") or "layernorm" in lname or "layer_norm" in lname or ".norm" in lname:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict], lr: float):
    """(AdamW over ``groups``, "fused" or "for-loop").

    The fused kernel updates every parameter in one pass: the same AdamW step, several times
    cheaper on CPU than torch's default per-parameter loop there (the default teacher's fine-tuning
    took 436 s against 466 s on 2 cores: bench/results/first_run_vnni.json,
    first_run_fused_vnni.json). Probed by constructing it: a torch or device without the fused
    kernel refuses at construction, and gets the loop.
    """
    import torch

    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr), "for-loop"


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    import torch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class EpochStats:
    epoch: int
    first_loss: float | None = None
    running: float | None = None  # exponential moving average of the loss (0.9)
    samples: int = 0


@dataclass
class LoopResult:
    steps: int
    samples: int
    time_s: float
    epochs: list[EpochStats] = field(default_factory=list)
    optimizer: str = ""  # "fused" or "for-loop" AdamW (:func:`adamw`)
    dropout: str = ""  # "fastft masks" (fastft.ops.dropout) or "torch"

    @property
    def optimizer_label(self) -> str:
        """The optimizer as reports name it: "AdamW (fused)" or "AdamW (for-loop)"."""
        return f"AdamW ({self.optimizer})"


class WeightAverage:
    """An exponential moving average of a net's trainable weights, updated after each step.

    The decay at update t is ``min(decay, (1 + t) / (10 + t))`` (TensorFlow's ExponentialMovingAverage
    with ``num_updates``): early updates forget the starting weights fast, which matters when a loop
    starts from just-pruned ones, and the average then spans the last ~``1 / (1 - decay)`` steps.
    """

    def __init__(self, net, decay: float):
        import torch

        self.decay = decay
        self.params = [p for p in net.parameters() if p.requires_grad]
        with torch.no_grad():
            self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0
        self.raw = None

    def update(self) -> None:
        import torch

        self.updates += 1
        weight = 1.0 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                s.lerp_(p, weight)

    def swap_in(self) -> None:
        """The net holds the average (its raw weights kept for :meth:`swap_out`)."""
        import torch

        with torch.no_grad():
            self.raw = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)

    def swap_out(self) -> None:
        """The net holds its raw weights again."""
        import torch

        with torch.no_grad():
            for p, r in zip(self.params, self.raw):
                p.copy_(r)
        self.raw = None


def run_loop(
    net,
    epoch_batches: Callable[[int], list],
    step_loss: Callable,
    *,
    steps_per_epoch: int,
    total_steps: int,
    lr: float,
    weight_decay: float,
    warmup_ratio: float,
    max_grad_norm: float = 1.0,
    end_epoch: Callable[[EpochStats], bool] | None = None,
    progress: bool = True,
    desc: str = "epoch",
    what: str = "training",
    postfix: Callable | None = None,
    fast_dropout: bool = True,
    ema: float = 0.0,
) -> LoopResult:
    """Train ``net`` for ``total_steps`` optimiser steps.

    epoch_batches(epoch) -> the epoch's batches (its length sizes the bar); step_loss(batch) ->
    (loss, samples, parts) with ``parts`` a dict shown on the bar (or None); end_epoch(stats) ->
    True to stop early (evaluation, best-state keeping, early stopping live there).

    ema: above 0, an exponential moving average of the weights (:class:`WeightAverage`) is what
    ``end_epoch`` sees and what the net holds when the loop returns; training steps go on from the
    raw weights.
    """
    import contextlib

    import torch
    from tqdm.auto import tqdm

    from fastft.swap.training import fast_dropout_training

    n_epochs = math.ceil(total_steps / steps_per_epoch)
    opt, kind = adamw(param_groups(net, weight_decay), lr)
    sched = linear_schedule(opt, int(warmup_ratio * total_steps), total_steps)
    res = LoopResult(0, 0, 0.0, optimizer=kind, dropout="fastft masks" if fast_dropout else "torch")
    training = fast_dropout_training(net) if fast_dropout else contextlib.nullcontext()
    average = WeightAverage(net, ema) if ema > 0 else None
    with training:
        t0 = time.perf_counter()
        for epoch in range(1, n_epochs + 1):
            net.train()
            batches = epoch_batches(epoch)
            bar = tqdm(
                total=min(len(batches), total_steps - res.steps),
                desc=f"{desc} {epoch}/{n_epochs}",
                unit="step",
                file=sys.stderr,
                disable=not progress,
                dynamic_ncols=True,
            )
            stats = EpochStats(epoch)
            for batch in batches:
                if res.steps >= total_steps:
                    break
                loss, samples, parts = step_loss(batch)
                if not torch.isfinite(loss):
                    raise FastftError(
                        f"{what} diverged: loss is {loss.item()} at step {res.steps} (try a lower {arg('lr')})"
                    )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if average is not None:
                    average.update()
                res.steps += 1
                res.samples += samples
                stats.samples += samples
                value = loss.item()
                stats.first_loss = value if stats.first_loss is None else stats.first_loss
                stats.running = value if stats.running is None else 0.9 * stats.running + 0.1 * value
                shown = {"loss": f"{stats.running:.4f}"}
                if postfix is not None:
                    shown.update(postfix(res, parts, time.perf_counter() - t0))
                bar.set_postfix(**shown)
                bar.update(1)
            bar.close()
            res.epochs.append(stats)
            if average is not None:
                average.swap_in()
            stop = end_epoch(stats) if end_epoch is not None else False
            if stop or res.steps >= total_steps:
                break  # the net keeps the average
            if average is not None:
                average.swap_out()
    res.time_s = time.perf_counter() - t0
    return res
