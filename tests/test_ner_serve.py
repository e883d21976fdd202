"""fastft serve on a token-classification model: a real uvicorn server, real clients (httpx,
tritonclient, a ``fastft serve`` process); entities checked against ``fastft.load(dir).predict``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from test_serve import Running, assert_metadata_describes, free_port, make_app
from tiny_ner import NER_TEXTS, save_tiny_token_model

NAME = "tiny"


@pytest.fixture(scope="module")
def ner_serve_dir(tmp_path_factory):
    from fastft.export import export

    src = save_tiny_token_model(tmp_path_factory.mktemp("ner-serve") / "tiny-ner")
    out = src.parent / "tiny-ner-onnx"
    export(src, out, overwrite=True, progress=False, validate=False)
    return out


@pytest.fixture(scope="module")
def entities(ner_serve_dir):
    import fastft

    pred = fastft.load(ner_serve_dir, threads=1)
    return pred.predict


@pytest.fixture(scope="module")
def ner_server(ner_serve_dir):
    with Running(make_app(ner_serve_dir, max_texts=64)) as s:
        yield s.wait_ready()


def _same(got: list[list[dict]], want: list[list[dict]]) -> None:
    assert [[(e["entity"], e["start"], e["end"], e["word"]) for e in g] for g in got] == [
        [(e["entity"], e["start"], e["end"], e["word"]) for e in w] for w in want
    ]
    for g, w in zip(got, want):
        assert [e["score"] for e in g] == pytest.approx([e["score"] for e in w], abs=1e-5)


def test_predict_returns_entities(ner_server, entities):
    r = httpx.post(ner_server.url + "/predict", json={"inputs": NER_TEXTS})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert all(set(p) == {"entities", "truncated"} for p in preds)
    _same([p["entities"] for p in preds], entities(NER_TEXTS))
    assert sum(len(p["entities"]) for p in preds) > 0 and not any(p["truncated"] for p in preds)


def test_concurrent_requests_are_batched_and_each_gets_its_own_entities(ner_server, entities):
    rng = np.random.default_rng(0)
    requests = [[NER_TEXTS[j] for j in rng.integers(0, len(NER_TEXTS), size=rng.integers(1, 5))] for _ in range(30)]

    async def go():
        async with httpx.AsyncClient(base_url=ner_server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/predict", json={"inputs": r}) for r in requests))

    for req, resp in zip(requests, asyncio.run(go())):
        assert resp.status_code == 200
        _same([p["entities"] for p in resp.json()["predictions"]], entities(req))


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_v2_entities(ner_server, entities, binary):
    import tritonclient.http as tc

    client = tc.InferenceServerClient(url=ner_server.url.removeprefix("http://"))
    meta = client.get_model_metadata(NAME)
    assert [o["name"] for o in meta["outputs"]] == ["entities", "truncated"]
    assert meta["parameters"]["task"] == "token-classification"
    inp = tc.InferInput("text", [len(NER_TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in NER_TEXTS], dtype=np.object_), binary_data=binary)
    outputs = [tc.InferRequestedOutput(n, binary_data=binary) for n in ("entities", "truncated")]
    res = client.infer(NAME, [inp], outputs=outputs)
    raw = [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("entities").tolist()]
    _same([json.loads(x) for x in raw], entities(NER_TEXTS))
    assert not res.as_numpy("truncated").any()
    assert_metadata_describes(meta, res.get_response())
    with pytest.raises(tc.InferenceServerException, match="unknown output 'label'"):
        client.infer(NAME, [inp], outputs=[tc.InferRequestedOutput("label")])
    client.close()


def test_v2_plain_json(ner_server, entities):
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": NER_TEXTS[:2]}]}
    r = httpx.post(f"{ner_server.url}/v2/models/{NAME}/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert set(out) == {"entities", "truncated"} and out["entities"]["shape"] == [2]
    _same([json.loads(x) for x in out["entities"]["data"]], entities(NER_TEXTS[:2]))
    # a text past the max length is flagged in the v2 answer too (it always said False)
    body["inputs"][0].update(shape=[3], data=[*NER_TEXTS[:2], "Angela Merkel visited Paris . " * 60])
    out = {o["name"]: o for o in httpx.post(f"{ner_server.url}/v2/models/{NAME}/infer", json=body).json()["outputs"]}
    assert out["truncated"]["data"] == [False, False, True] and out["truncated"]["shape"] == [3]


def test_bad_requests_get_json_errors(ner_server):
    r = httpx.post(ner_server.url + "/predict", json={"inputs": "Angela Merkel"})
    assert r.status_code == 422 and "single string" in r.json()["error"]
    r = httpx.post(ner_server.url + "/predict", json={"inputs": ["ok", ""]})
    assert r.status_code == 422 and "empty" in r.json()["error"]


def test_fastft_serve_process(ner_serve_dir, entities):
    """``fastft serve DIR`` as a process: entities on /predict, SIGTERM exits 0."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastft", "serve", str(ner_serve_dir), "--port", str(port), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    try:
        deadline = time.monotonic() + 120  # load + warm-up (cost table) on a busy 2-core machine
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(url + "/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never turned ready"
            time.sleep(0.1)
        r = httpx.post(url + "/predict", json={"inputs": NER_TEXTS[:1]})
        assert r.status_code == 200
        _same([r.json()["predictions"][0]["entities"]], entities(NER_TEXTS[:1]))
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0


def test_a_tagger_drops_the_texts_of_a_client_that_left_without_a_traceback(ner_serve_dir, caplog):
    """A client that left while its texts waited was logged as an ERROR traceback per client
    ("grouping entities failed": its job never ran, so had no scores): it is a silent 499."""
    import logging

    import fastft
    from fastft.serve.batcher import Batcher, _Job

    batcher = Batcher(fastft.load(ner_serve_dir))
    loop = asyncio.new_event_loop()
    try:
        left, stays = (_Job(["Angela Merkel visited Paris"], loop.create_future(), loop) for _ in range(2))
        left.future.cancel()
        for j in (left, stays):
            batcher._encode(j)
        with caplog.at_level(logging.ERROR, logger="fastft.serve"):
            batcher._run([left, stays])
            batcher._deliver([left, stays])
            loop.run_until_complete(asyncio.sleep(0))
        assert not caplog.records, [r.getMessage() for r in caplog.records]
        assert left.probs is None and len(stays.future.result().entities) == 1
    finally:
        loop.close()


def test_a_tagger_answers_each_text_its_own_tokens_rows_without_the_padding(ner_serve_dir):
    """Result.probs of a tagger: one (tokens, labels) array per text, its own tokens' rows only, even
    when a longer text shared its call (the padding rows cut off), equal to the text run alone."""
    import fastft
    from fastft.serve.batcher import Batcher

    batcher = Batcher(fastft.load(ner_serve_dir, threads=1), batching=False, max_batch_size=8)  # one call
    texts = ["Paris", NER_TEXTS[0] + " " + NER_TEXTS[0]]
    lengths = batcher.encoder.encode(texts).lengths().tolist()
    assert lengths[0] < lengths[1]
    (together,) = batcher.run_batch([texts])
    alone = batcher.run_batch([texts[:1]])[0]
    assert [p.shape for p in together.probs] == [(n, len(batcher.predictor.labels)) for n in lengths]
    np.testing.assert_allclose(together.probs[0], alone.probs[0], atol=1e-5)
