"""The backends of ``fastft bench``, one :class:`Runner` each, and the inputs they run on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastft.bench.backends import BACKENDS
from fastft.core.errors import FastftError


class Runner:
    """One backend, ready to run: ``run(prepare(feeds))`` executes the model once.

    ``prepare`` turns numpy feeds into what the backend takes (torch tensors, the ORT
    session's inputs) outside the timed region.
    """

    def __init__(self, name: str, run, file: Path | None, info: dict, prepare=None):
        self.name, self.run, self.file, self.info = name, run, file, info
        self.prepare = prepare or (lambda feeds: feeds)

    def file_size_mb(self) -> float | None:
        if self.file is None:
            return None
        files = [self.file]
        if self.file.suffix == ".onnx":  # external data next to the graph
            files += [f for f in self.file.parent.glob(self.file.name + "*data") if f.is_file()]
        return round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 2)


def make_runner(name: str, art: dict[str, Path], threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    if name == "hf-eager":
        from fastft.models import load_classifier
        from fastft.models.task import model_task

        # load_classifier: transformers' own classes, a head-pruned model rebuilt as fastft wrote
        # it (plain from_pretrained refuses its shapes), load errors in one line
        net = load_classifier(art["model_dir"], task=model_task(art["model_dir"]))
        net.set_attn_implementation("eager")
        net = net.float().eval()
        info = {"attention": "eager", "class": type(net).__name__}
        return Runner(name, _torch_run(net), _weights(art["model_dir"]), info, _to_torch)
    if name == "fastft-torch":
        import fastft

        p = fastft.load(art["model_dir"], backend="torch", threads=threads, fused_attention=None, warm_up=False)
        return Runner(name, _torch_run(p.model), _weights(art["model_dir"]), {"attention": p.attention}, _to_torch)
    if name in ("fastft-fp32", "fastft-int8"):
        import fastft

        p = fastft.load(art["fastft"], threads=threads, int8=name.endswith("int8"), warm_up=False)
        info = p.info()
        return Runner(
            name,
            lambda feeds: p.logits_from_ids(**feeds),
            p.onnx_file,
            {
                **{k: info[k] for k in ("threads", "spinning", "graph_optimization", "attention", "fastft_ops")},
                **_export_record(art["fastft"], name),
            },
        )
    if name in ("ort-plain", "peer-fp32", "peer-int8"):
        from fastft.runtime.session import create_session, session_options

        sess = create_session(art[name], session_options(threads=threads, spinning=False, level="all"))
        inputs = [i.name for i in sess.get_inputs()]
        out = sess.get_outputs()[0].name

        def run(feeds):
            return sess.run([out], feeds)[0]

        return Runner(
            name,
            run,
            art[name],
            {"threads": threads, "spinning": False, "graph_optimization": "all"},
            lambda feeds: {k: v for k, v in feeds.items() if k in inputs},
        )
    raise FastftError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def _export_record(model_dir: Path, name: str) -> dict:
    """What the served export is, from its fastft.json: the INT8 recipe, the MatMuls its accuracy
    check kept in fp32 and the label agreement it measured; SkipLayerNormalization nodes split."""
    from fastft.core.schema import read_meta

    onnx_meta = read_meta(model_dir).get("onnx") or {}
    out = {}
    split = ((onnx_meta.get("optimization") or {}).get("ort_offline") or {}).get("skip_layernorm")
    if split is not None:
        out["skip_layernorm_split"] = split.get("split")
    if name.endswith("int8") and onnx_meta.get("int8"):
        q = onnx_meta["int8"]
        out["int8_recipe"] = q.get("recipe")
        out["int8_fp32_nodes"] = len((q.get("fallback") or {}).get("fp32_nodes") or q.get("exclude") or [])
        out["int8_label_agreement"] = ((onnx_meta.get("parity") or {}).get("int8") or {}).get("label_agreement")
    return out


def _weights(model_dir: Path) -> Path | None:
    for n in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / n).is_file():
            return model_dir / n
    return None


def _to_torch(feeds):
    import torch

    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def _torch_run(net):
    import torch

    def run(feeds):
        with torch.inference_mode():
            return net(**feeds).logits.numpy()

    return run


# -- inputs ----------------------------------------------------------------------------
FALLBACK_TEXT = (
    "a sharp, funny and surprisingly moving film about growing up, with a cast that makes every "
    "scene count, even when the script wanders into cliches and the ending drags on too long. "
)


def bench_texts() -> list[str]:
    try:
        from fastft.data import load_data

        return list(load_data("movie-snippets").train.texts[:400])
    except Exception:  # noqa: BLE001 - any data problem: fall back to built-in text
        return [FALLBACK_TEXT]


def make_inputs(
    tokenizer, batch: int, seq: int, texts: list[str], lengths: list[int] | None = None
) -> dict[str, np.ndarray]:
    """batch x seq token ids of real text ([CLS] ... [SEP]), full attention mask; with ``lengths``
    (one per row) row r keeps its first lengths[r] tokens, [SEP] last, and is right-padded."""
    body = tokenizer(" ".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    while len(body) < batch * seq:
        body = body + body
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    rows = [[cls] + body[r * seq : (r + 1) * seq - 2] + [sep] for r in range(batch)]
    ids = np.asarray(rows, dtype=np.int64)
    mask = np.ones_like(ids)
    for r, n in enumerate(lengths or []):
        ids[r, n - 1] = sep
        ids[r, n:] = tokenizer.pad_token_id or 0
        mask[r, n:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
