"""Knowledge distillation: a smaller student learns the teacher's logits and hidden states.

    student = make_student(teacher, "teacher-layers", layers=3, labels=labels)
    cache = cache_teacher(teacher, train_ids, layer_map_teacher)      # once, not every epoch
    history = train_student(student, cache, train_ids, train_labels, cfg, ...)

Loss per batch: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
+ hidden_weight * MSE(student hidden_i, teacher hidden_map(i))`` over real tokens only.

The teacher's logits and mapped hidden states are computed once, in eval mode, and kept
in memory: logits fp32 ``(n, labels)``; hidden states fp16 for real tokens only, flat
``(total_tokens, mapped_layers, hidden)`` with per-row offsets (movie-snippets: ~8.4k
rows x ~30 tokens x 3 layers x 384 x 2 bytes, about 0.6 GB, instead of 1.5 GB for all
layers padded to 64 in fp32).
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass

from fastft.core.checks import arg
from fastft.core.errors import FastftError, ModelError
from fastft.data.collate import length_buckets as length_bucketed_batches
from fastft.data.collate import pad_rows, sorted_batches
from fastft.models import load_classifier
from fastft.train.loop import EpochStats, run_loop

NO_LABEL = -100  # a distillation row with soft targets only (--transfer texts, --augment-labels teacher copies)


def layer_plan(n_teacher: int, n_student: int) -> tuple[list[int], list[int]]:
    """(teacher layers copied into the student, teacher hidden-state index each student layer matches).

    Student layer i stands for teacher layers [i*L/N, (i+1)*L/N): it is initialised from the
    first of them and its output is matched to the output of the last (hidden_states index
    ``(i+1)*L/N``; index 0 is the embeddings). N = L/2 gives DistilBERT's every other layer.
    """
    if not 1 <= n_student <= n_teacher:
        raise FastftError(f"{arg('layers')} must be between 1 and the teacher's {n_teacher} layers (got {n_student})")
    init = [math.floor(i * n_teacher / n_student) for i in range(n_student)]
    match = [round((i + 1) * n_teacher / n_student) for i in range(n_student)]
    return init, match


def make_student(teacher, student: str, layers: int | None, labels: list[str], depth: float | None = None):
    """A student classifier: the teacher's own layers, the built-in minilm-l3, or a directory.

    teacher-layers: ``layers`` of them, else ``depth`` (a fraction, half when None) of the teacher's
    depth, rounded down, at least one.

    Returns (student, teacher hidden-state indices matched by student layers 1..N, or None
    when hidden sizes differ and only the logits are distilled).
    """
    import torch

    n_t = teacher.config.num_hidden_layers
    if student == "teacher-layers":
        n_s = layers if layers is not None else max(1, int(n_t * (0.5 if depth is None else depth) + 1e-9))
        init, match = layer_plan(n_t, n_s)
        cfg = copy.deepcopy(teacher.config)
        cfg.num_hidden_layers = n_s
        net = type(teacher)(cfg)
        sd = teacher.state_dict()
        enc = encoder_prefix(teacher)
        new = {}
        for k, v in sd.items():
            if k.startswith(enc):
                idx, rest = k[len(enc) :].split(".", 1)
                if int(idx) in init:
                    new[f"{enc}{init.index(int(idx))}.{rest}"] = v.clone()
            else:
                new[k] = v.clone()
        missing, unexpected = net.load_state_dict(new, strict=False)
        if [m for m in missing if "position_ids" not in m] or unexpected:
            raise ModelError(f"cannot copy the teacher's layers into a student ({missing[:2]}, {unexpected[:2]})")
        net.config.fastft_student = {"kind": "teacher-layers", "teacher_layers": init}
        return net.to(torch.float32).eval(), match

    task = "token-classification" if type(teacher).__name__.endswith("ForTokenClassification") else None
    net = load_classifier(student, labels=labels, **({"task": task} if task else {})).eval()
    n_s = net.config.num_hidden_layers
    if n_s > n_t:
        raise FastftError(f"{arg('student')} {student!r} has {n_s} layers, more than the teacher's {n_t}")
    if getattr(net.config, "hidden_size", None) != getattr(teacher.config, "hidden_size", None):
        print(
            f"fastft: student hidden size {net.config.hidden_size} differs from the teacher's "
            f"{teacher.config.hidden_size}: distilling logits only",
            file=sys.stderr,
        )
        return net, None
    return net, layer_plan(n_t, n_s)[1]


def set_dropout(net, p: float) -> None:
    """Every ``nn.Dropout`` of ``net`` drops with probability ``p`` (attention dropout reads its
    module's ``p`` too), and its config says so."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if isinstance(getattr(net.config, name, None), float):
            setattr(net.config, name, p)


def encoder_prefix(model) -> str:
    """The name of ``model``'s layer stack (``...encoder.layer.``): what a teacher-layers student copies."""
    for name, _ in model.named_modules():
        if name.endswith("encoder.layer"):
            return name + "."
    raise ModelError(f"{type(model).__name__}: no encoder.layer stack (distillation supports BERT-style encoders)")


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated, unpadded (tokenized once, reused every epoch)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return [list(x) for x in enc["input_ids"]]


def pad_batch(ids: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) torch tensors, each (batch, longest)."""
    import torch

    x, m = pad_rows(ids, range(len(ids)), pad_id)
    return torch.from_numpy(x), torch.from_numpy(m)


@dataclass
class TeacherCache:
    """The teacher's outputs on the training rows, computed once.

    logits: (n, labels) fp32. hidden: (total_tokens, len(layers), hidden) fp16, real tokens
    only, row r at ``offsets[r]:offsets[r+1]``; None when hidden states are not distilled.
    """

    logits: object
    hidden: object | None
    offsets: object
    layers: list[int] | None

    def hidden_batch(self, rows: list[int], seq: int):
        """(batch, seq, len(layers), hidden) fp32, zeros on padding."""
        import torch

        k, h = self.hidden.shape[1], self.hidden.shape[2]
        out = torch.zeros((len(rows), seq, k, h), dtype=torch.float32)
        for i, r in enumerate(rows):
            a, b = int(self.offsets[r]), int(self.offsets[r + 1])
            out[i, : b - a] = self.hidden[a:b].float()
        return out

    def nbytes(self) -> int:
        n = self.logits.numel() * 4
        return n + (self.hidden.numel() * 2 if self.hidden is not None else 0)


def cache_teacher(
    teacher,
    ids: list[list[int]],
    pad_id: int,
    layers: list[int] | None,
    batch_size: int = 64,
    progress: bool = True,
    per_token: bool = False,
) -> TeacherCache:
    """Run the teacher once over ``ids`` (length-sorted batches) and keep what distillation needs.

    per_token: the teacher is a token classifier; its logits are kept flat per real token,
    ``(total_tokens, labels)`` at ``offsets`` like the hidden states (see ``compress.token_kd``).
    """
    import torch

    lengths = torch.tensor([len(x) for x in ids])
    offsets = torch.zeros(len(ids) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    rows_n = int(offsets[-1]) if per_token else len(ids)
    logits = torch.zeros((rows_n, teacher.config.num_labels), dtype=torch.float32)
    hidden = None
    if layers:
        hidden = torch.zeros((int(offsets[-1]), len(layers), teacher.config.hidden_size), dtype=torch.float16)
    teacher.eval()
    with torch.inference_mode():
        for rows in sorted_batches(lengths.tolist(), batch_size, desc="teacher outputs (once)", progress=progress):
            input_ids, mask = pad_batch([ids[r] for r in rows], pad_id)
            out = teacher(input_ids=input_ids, attention_mask=mask, output_hidden_states=bool(layers))
            if per_token:
                for i, r in enumerate(rows):
                    logits[offsets[r] : offsets[r + 1]] = out.logits[i, : len(ids[r])].float()
            else:
                logits[rows] = out.logits.float()
            if layers:
                hs = torch.stack([out.hidden_states[j] for j in layers], dim=2)  # (b, s, k, h)
                for i, r in enumerate(rows):
                    hidden[offsets[r] : offsets[r + 1]] = hs[i, : len(ids[r])].to(torch.float16)
    if not torch.isfinite(logits).all():  # distillation would stop at step 0 as "diverged"
        raise ModelError("the teacher's scores are not finite (NaN or inf): its weights are broken")
    return TeacherCache(logits, hidden, offsets, layers)


def soft_kl(logits, target_logits, temperature: float):
    """T^2 KL(target || logits) of the temperature-softened distributions, averaged over rows."""
    import torch.nn.functional as F

    T = temperature
    log_p, log_q = F.log_softmax(logits / T, -1), F.log_softmax(target_logits / T, -1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * T * T


def distill_loss(
    out, labels, t_logits, t_hidden, mask, temperature: float, alpha: float, hidden_weight: float, kd_loss: str = "kl"
):
    """(total loss, parts dict). t_hidden: (b, s, k, h) or None; mask: (b, s).

    kd_loss: "kl" (T^2 * KL of the temperature-softened distributions, averaged over rows) or "mse"
    (the raw logits' squared error, averaged over rows and classes; temperature unused)."""
    import torch.nn.functional as F

    s_logits = out.logits
    if kd_loss == "mse":
        kd = F.mse_loss(s_logits, t_logits.to(s_logits.dtype))
    elif kd_loss == "kl":
        kd = soft_kl(s_logits, t_logits, temperature)
    else:
        raise ValueError(f"unknown kd_loss {kd_loss!r} (kl or mse)")
    labelled = labels != NO_LABEL
    if bool(labelled.all()):
        ce = F.cross_entropy(s_logits, labels)
    else:
        # rows without a hard label (--transfer texts, --augment-labels teacher copies) learn from the
        # teacher alone: each labelled row weighs 1/batch as it would among labelled rows only, so rows
        # without one neither raise nor dilute the others' label term (none at all: 0, not nan)
        ce = F.cross_entropy(s_logits, labels, ignore_index=NO_LABEL, reduction="sum") / labels.numel()
    loss = alpha * kd + (1 - alpha) * ce
    parts = {"kd": kd.item(), "ce": ce.item()}
    if t_hidden is not None and hidden_weight > 0:
        import torch

        s_hidden = torch.stack(out.hidden_states[1:], dim=2)  # (b, s, k, h), student layers 1..N
        m = mask.unsqueeze(-1).unsqueeze(-1).to(s_hidden.dtype)
        mse = ((s_hidden - t_hidden) ** 2 * m).sum() / (m.sum() * s_hidden.shape[2] * s_hidden.shape[3])
        loss = loss + hidden_weight * mse
        parts["hidden_mse"] = mse.item()
    return loss, parts


def int8_consistency(student, mods, input_ids, mask, logits, temperature: float, rng_state=None):
    """T^2 KL from the fp32 outputs of ``student``'s own weights (no gradient: the target) to
    ``logits``, its outputs with INT8 simulated (``mods``: its fake-quant modules). Token
    classification: over the unmasked tokens. Pulls the INT8 graph's labels onto its fp32's.

    rng_state: torch's generator state before the pass that gave ``logits``: the fp32 pass replays
    it, so in training it draws the same dropout masks and the term sees the rounding alone (the
    generator is left where it was)."""
    import torch

    from fastft.compress import qat as qat_mod

    after = torch.get_rng_state()
    if rng_state is not None:
        torch.set_rng_state(rng_state)
    try:
        with torch.no_grad(), qat_mod.unquantised(mods):
            ref = student(input_ids=input_ids, attention_mask=mask).logits
    finally:
        torch.set_rng_state(after)
    if logits.dim() == 3:  # (batch, seq, labels): the real tokens
        keep = mask.bool()
        logits, ref = logits[keep], ref[keep]
    return soft_kl(logits, ref, temperature)


def train_student(
    student,
    cache: TeacherCache,
    ids: list[list[int]],
    labels: list[int],
    *,
    pad_id: int,
    epochs: float,
    lr: float,
    batch_size: int,
    temperature: float,
    alpha: float,
    hidden_weight: float,
    kd_loss: str = "kl",
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    ema: float = 0.0,
    seed: int = 42,
    evaluate=None,
    progress: bool = True,
    desc: str = "distill",
    qat=None,
    loss_inputs=None,
) -> dict:
    """Train ``student`` against the cached teacher; keep the best epoch by ``evaluate(student)``.

    evaluate: callable returning validation accuracy (None: keep the last epoch).
    qat: a :class:`fastft.compress.qat.QatSpec`: its last ``qat.epochs`` epochs (at most all) run
        with ORT's INT8 simulated (fake-quant, straight-through) and only such epochs compete for
        "best" (the weights that are quantised next must be the ones trained for it).
    loss_inputs: (student outputs, rows, seq) -> (outputs, labels, teacher logits) handed to
    :func:`distill_loss` (token classification selects the labelled tokens; None: one label per row).
    ema: weight-average decay (:class:`fastft.train.loop.WeightAverage`; 0: off): the average is
    what is evaluated, kept and returned.
    Returns history (loss per epoch, validation accuracy), steps, time.
    """
    import torch

    from fastft.compress import qat as qat_mod

    g = torch.Generator().manual_seed(seed)
    lengths = [len(x) for x in ids]
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    total = max(1, math.ceil(steps_per_epoch * epochs))
    y_all = torch.tensor(labels, dtype=torch.long) if loss_inputs is None else None
    use_hidden = cache.hidden is not None and hidden_weight > 0
    history, best = [], {"value": None, "state": None}
    n_epochs = math.ceil(total / steps_per_epoch)
    qat_on = {"mods": None}  # the fake-quant modules once the quantization-aware epochs begin

    def epoch_batches(epoch: int):
        if qat is not None and epoch > n_epochs - qat.epochs and qat_on["mods"] is None:
            qat_on["mods"] = qat_mod.attach(student, qat)
            print(f"{desc} epoch {epoch}: quantization-aware (ORT INT8 simulated)", file=sys.stderr)
        return length_bucketed_batches(lengths, batch_size, g)

    def step_loss(rows):
        input_ids, mask = pad_batch([ids[r] for r in rows], pad_id)
        consistency = qat_on["mods"] is not None and qat.consistency > 0
        rng = torch.get_rng_state() if consistency else None
        out = student(input_ids=input_ids, attention_mask=mask, output_hidden_states=use_hidden)
        t_hidden = cache.hidden_batch(rows, input_ids.shape[1]) if use_hidden else None
        logits = out.logits  # (batch, labels), or (batch, seq, labels) before loss_inputs picks tokens
        if loss_inputs is None:
            out, y, t = out, y_all[rows], cache.logits[rows]
        else:
            out, y, t = loss_inputs(out, rows, input_ids.shape[1])
        loss, parts = distill_loss(
            out,
            y,
            t,
            t_hidden,
            mask,
            temperature,
            alpha,
            hidden_weight if use_hidden else 0.0,
            kd_loss,
        )
        if consistency:
            cons = int8_consistency(student, qat_on["mods"], input_ids, mask, logits, temperature, rng)
            loss = loss + qat.consistency * cons
            parts["consistency"] = cons.item()
        return loss, len(rows), parts

    def end_epoch(stats: EpochStats) -> bool:
        entry = {"epoch": stats.epoch, "first_loss": stats.first_loss, "loss": stats.running}
        if qat_on["mods"] is not None:
            entry["qat"] = True
        if evaluate is not None and (qat is None or qat_on["mods"] is not None):
            student.eval()
            entry["validation_accuracy"] = evaluate(student)
            if best["value"] is None or entry["validation_accuracy"] > best["value"]:
                best["value"] = entry["validation_accuracy"]
                best["state"] = {k: v.detach().clone() for k, v in student.state_dict().items()}
                entry["best"] = True
        history.append(entry)
        what = "entity F1" if loss_inputs is not None else "accuracy"  # (token distillation has loss_inputs)
        acc = f", validation {what} {entry['validation_accuracy']:.4f}" if "validation_accuracy" in entry else ""
        print(f"{desc} epoch {stats.epoch}: loss {stats.running:.4f}{acc}", file=sys.stderr)
        return False

    try:
        res = run_loop(
            student,
            epoch_batches,
            step_loss,
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            lr=lr,
            weight_decay=weight_decay,
            warmup_ratio=warmup_ratio,
            max_grad_norm=1.0,
            ema=ema,
            end_epoch=end_epoch,
            progress=progress,
            desc=f"{desc} epoch",
            what="distillation",
            postfix=lambda r, parts, elapsed: {k: f"{v:.3f}" for k, v in parts.items()},
        )
    finally:
        qat_mod.detach(student)
    best_state, step = best["state"], res.steps
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    out = {
        "history": history,
        "steps": step,
        "optimizer": res.optimizer_label,
        "dropout": res.dropout,
        "time_s": round(res.time_s, 2),
    }
    if qat is not None:
        out["qat"] = {"epochs": min(qat.epochs, n_epochs), **qat.to_dict()}
    return out
