"""The servers people write by hand, as baselines for bench/bench_serve.py (not part of fastft).

    python bench/serve_baselines.py pipeline DIR --port 8101   # (b) FastAPI + transformers pipeline
    python bench/serve_baselines.py ort DIR --port 8102        # (c) FastAPI + ONNX Runtime, per request

Both answer ``POST /predict {"inputs": [texts]}`` like ``fastft serve`` and run one request per
model call in FastAPI's thread pool (a plain ``def`` endpoint), on uvicorn with default settings:
the usual hand-written server. (b) runs the PyTorch weights of DIR through
``transformers.pipeline("text-classification")``; (c) runs the same ONNX file that fastft serves
(``model_int8.onnx`` when fastft.json names it the default) with a default ONNX Runtime session,
tokenizing with ``AutoTokenizer`` (padding to the longest text of the request).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel


class Req(BaseModel):
    """The request body, as FastAPI users declare it."""

    inputs: list[str]


def pipeline_app(model_dir: str):
    from fastapi import FastAPI
    from transformers import AutoTokenizer, pipeline

    from fastft.models import load_classifier  # head-pruned directories need fastft's loader

    net = load_classifier(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    max_length = _max_length(model_dir)
    pipe = pipeline("text-classification", model=net, tokenizer=tok, top_k=None, device=-1)
    app = FastAPI()

    @app.post("/predict")
    def predict(req: Req):
        out = pipe(req.inputs, truncation=True, max_length=max_length)
        preds = []
        for scores in out:
            best = max(scores, key=lambda s: s["score"])
            preds.append(
                {"label": best["label"], "score": best["score"], "scores": {s["label"]: s["score"] for s in scores}}
            )
        return {"predictions": preds}

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}

    return app


def ort_app(model_dir: str):
    import onnxruntime as ort
    from fastapi import FastAPI
    from transformers import AutoTokenizer

    path = Path(model_dir)
    onnx_file = _served_file(path)
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    tok = AutoTokenizer.from_pretrained(model_dir)
    max_length = _max_length(model_dir)
    labels = _labels(path)
    app = FastAPI()

    @app.post("/predict")
    def predict(req: Req):
        enc = tok(req.inputs, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        logits = sess.run(None, {n: enc[n].astype(np.int64) for n in names})[0]
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        preds = []
        for p in probs.tolist():
            b = int(np.argmax(p))
            preds.append({"label": labels[b], "score": p[b], "scores": dict(zip(labels, p))})
        return {"predictions": preds}

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}

    return app


def _meta(path: Path) -> dict:
    f = path / "fastft.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _max_length(model_dir) -> int:
    return int(_meta(Path(model_dir)).get("max_length") or 128)


def _labels(path: Path) -> list[str]:
    labels = _meta(path).get("labels")
    if labels:
        return list(labels)
    cfg = json.loads((path / "config.json").read_text())
    return [cfg["id2label"][str(i)] for i in range(len(cfg["id2label"]))]


def _served_file(path: Path) -> Path:
    """The file fastft.load serves by default (same rule: fastft.json's default, else model.onnx)."""
    from fastft.runtime.load import served_onnx

    return served_onnx(path)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["pipeline", "ort"])
    ap.add_argument("model")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    import uvicorn

    app = pipeline_app(args.model) if args.kind == "pipeline" else ort_app(args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
