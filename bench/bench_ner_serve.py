"""Serving latency of a token-classification (NER) model: ``fastft bench``'s backends, then text
to entities end to end against transformers' ``pipeline("token-classification")``.

    python bench/bench_ner_serve.py                          # minilm-l6 with a fresh 9-tag head
    python bench/bench_ner_serve.py --model runs/ner         # a trained NER directory
    python bench/bench_ner_serve.py --repeats 5 --texts 8 --result /tmp/r.json   # smoke

1. model execution per backend at ``--seq`` (HF eager, fastft torch, plain ORT, the peer pipeline
   fp32/INT8, fastft fp32/INT8): :func:`fastft.bench.run_bench` on per-token logits;
2. end to end, ``--texts`` sentences per call (tokenize, run, group word pieces into entities):
   transformers' pipeline with ``aggregation_strategy="simple"`` (PyTorch) against
   ``fastft.load(dir).predict`` on model.onnx, model_int8.onnx and PyTorch, interleaved; the
   entities of fastft's fp32 ONNX model decoded like the pipeline (``decode="argmax"``) are
   compared with the pipeline's (same spans expected); the default decoding (valid IOB2
   sequences) is timed and compared too.

Latency does not depend on the head's weights, so an untrained head measures speed; a trained
directory (``--model``) also makes the span comparison meaningful on real entities.
Writes bench/results/ner_serve_minilm-l6.json (rows also as .csv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastft.bench.runner import interleave, quantiles, write_result  # first: notes the load at the start

ROOT = Path(__file__).resolve().parents[1]
TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
# written for this benchmark (news-style sentences with people, places, organisations)
SENTENCES = [
    "Angela Merkel visited Paris on Monday to meet President Emmanuel Macron.",
    "Shares of Siemens AG rose 3 percent in Frankfurt after the company raised its forecast.",
    "The United Nations Security Council met in New York to discuss the crisis in Sudan.",
    "Lionel Messi scored twice as Inter Miami beat the New York Red Bulls 4-1.",
    "Microsoft and OpenAI announced a new partnership in Redmond, Washington.",
    "The European Central Bank kept interest rates unchanged, said Christine Lagarde.",
    "Toyota will build a battery plant in North Carolina, the Japanese carmaker said.",
    "Serena Williams withdrew from the Australian Open in Melbourne with an injury.",
    "The World Health Organization warned of a new outbreak in the Democratic Republic of Congo.",
    "Police in London arrested two men after a protest outside Downing Street.",
    "Brazil's President Luiz Inacio Lula da Silva flew to Beijing for talks with Xi Jinping.",
    "Deutsche Bank agreed to pay a fine to the U.S. Department of Justice.",
]


def fresh_token_model() -> Path:
    """minilm-l6 with a fresh 9-tag token-classification head (cached)."""
    from fastft.models import cache_dir

    path = cache_dir() / "bench" / "minilm-l6-fresh-token-head"
    if (path / "fastft.json").is_file():
        return path
    import torch

    from fastft.core.io import atomic_output_dir
    from fastft.models import load_classifier, load_tokenizer, write_meta

    torch.manual_seed(0)
    net = load_classifier("minilm-l6", labels=TAGS, task="token-classification")
    with atomic_output_dir(path, overwrite=True) as tmp:
        net.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer("minilm-l6").save_pretrained(tmp)
        meta = {"format": 1, "task": "token-classification", "labels": TAGS, "base_model": "minilm-l6"}
        write_meta(tmp, {**meta, "max_length": 512, "note": "fresh head, for benchmarks"})
    return path


def spans(entities: list[list[dict]]) -> list[list[tuple]]:
    return [[(e["entity"], e["start"], e["end"]) for e in ents] for ents in entities]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="token-classification directory [minilm-l6, fresh head]")
    ap.add_argument("--seq", type=int, default=128, help="sequence length of part 1 [128]")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads [physical cores]")
    ap.add_argument("--repeats", type=int, default=100, help="timed rounds of part 1 [100]")
    ap.add_argument("--e2e-repeats", type=int, default=30, help="timed rounds of part 2 [30]")
    ap.add_argument("--texts", type=int, default=len(SENTENCES), help="sentences per end-to-end call")
    ap.add_argument("--workdir", default=None, help="where exports are cached [fastft's cache]")
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "ner_serve_minilm-l6.json"))
    args = ap.parse_args()

    import warnings

    import fastft
    from fastft.bench.artifacts import prepare, work_dir
    from fastft.bench.harness import BenchConfig, run_bench
    from fastft.core.system import physical_cores

    model = Path(args.model).resolve() if args.model else fresh_token_model()
    threads = args.threads or physical_cores()
    log = lambda m: print(f"bench_ner_serve: {m}", file=sys.stderr)  # noqa: E731
    payload = run_bench(
        BenchConfig(model=str(model), seqs=[args.seq], threads=threads, repeats=args.repeats, workdir=args.workdir),
        log=log,
    )

    # part 2: text -> entities, end to end
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    torch.set_num_threads(threads)
    texts = (SENTENCES * (1 + args.texts // len(SENTENCES)))[: args.texts]
    art = prepare(model, ["fastft-fp32", "fastft-int8"], work_dir(model, args.workdir), log)
    hf = AutoModelForTokenClassification.from_pretrained(str(model), attn_implementation="eager").eval()
    nlp = pipeline(
        "token-classification",
        model=hf,
        tokenizer=AutoTokenizer.from_pretrained(str(model)),
        aggregation_strategy="simple",
        device="cpu",
    )
    preds = {
        "fastft-predict-fp32": fastft.load(art["fastft"], threads=threads, int8=False),
        "fastft-predict-fp32-argmax": fastft.load(art["fastft"], threads=threads, int8=False, decode="argmax"),
        "fastft-predict-int8": fastft.load(art["fastft"], threads=threads, int8=True),
        "fastft-predict-torch": fastft.load(model, backend="torch", threads=threads, fused_attention=None),
    }
    fns = {"hf-pipeline": lambda: nlp(texts, batch_size=len(texts))}
    fns.update({k: (lambda p=p: p.predict(texts, batch_size=len(texts))) for k, p in preds.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = [
            [{"entity": e["entity_group"], "start": e["start"], "end": e["end"]} for e in ents]
            for ents in nlp(texts, batch_size=len(texts))
        ]
        outs = {k: p.predict(texts) for k, p in preds.items()}
        log(f"end to end: {len(texts)} sentences per call, {args.e2e_repeats} interleaved rounds")
        times = interleave(fns, rounds=args.e2e_repeats, warmup=2, order="random", gap_s=0.005)
    base = quantiles(times.wall["hf-pipeline"])["p50_ms"]
    e2e = []
    for name, wall in times.wall.items():
        q = quantiles(wall)
        row = {"backend": name, "texts_per_call": len(texts), **q}
        row["texts_per_s"] = round(len(texts) / (q["mean_ms"] / 1e3), 1)
        row["speedup_vs_hf_pipeline"] = round(base / q["p50_ms"], 3)
        if name in outs:
            same = [a == b for a, b in zip(spans(outs[name]), spans(ref))]
            row["texts_with_pipeline_spans"] = f"{sum(same)}/{len(same)}"
        e2e.append(row)
    payload["end_to_end"] = {
        "what": "texts -> entities per call (tokenize, run, group word pieces), batch = all texts; "
        "hf-pipeline = transformers pipeline('token-classification', aggregation_strategy='simple'), "
        "PyTorch eager attention",
        "texts": "written news-style sentences (bench/bench_ner_serve.py SENTENCES)",
        "entities_found_by_pipeline": sum(map(len, ref)),
        "decode": "fastft-predict-* decode tags as the most likely valid IOB2 sequence (fastft's default); "
        "fastft-predict-fp32-argmax takes each token's own best tag, as the pipeline does, so its spans "
        "are expected to match the pipeline's on every text",
        "rows": e2e,
    }
    payload["benchmark"] = "NER serving latency (fastft bench backends + end to end)"
    rows = [{"part": "model", **r} for r in payload["results"]] + [{"part": "end_to_end", **r} for r in e2e]
    write_result(args.result, payload, csv_rows=rows)
    print(f"wrote {args.result}")
    for r in e2e:
        print(
            f"{r['backend']:<22} p50 {r['p50_ms']:8.2f} ms  p90 {r['p90_ms']:8.2f} ms  "
            f"x{r['speedup_vs_hf_pipeline']:.2f} vs pipeline  {r.get('texts_with_pipeline_spans', '')}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
