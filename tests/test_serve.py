"""fastft serve: a real uvicorn server on 127.0.0.1, driven by real clients (httpx, curl, tritonclient).

The tiny random BERT is exported to ONNX once; answers are checked against
``fastft.load(dir).predict_proba`` on the same directory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest

TEXTS = [
    "a fine film",
    "a dull, boring mess of a movie that goes on and on and on",
    "ok",
    "brilliant acting and a great story, i loved every minute of it",
    "meh",
    "funny, warm and smart",
]
NAME = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model exported to ONNX (plain attention graph), as ``fastft export`` writes it."""
    from fastft.export import export

    out = tmp_path_factory.mktemp("serve") / "tiny-onnx"
    export(tiny_model_dir, out, int8=False, overwrite=True, progress=False, validate=False, fused_attention=False)
    return out


@pytest.fixture(scope="session")
def reference(serve_dir):
    import fastft

    pred = fastft.load(serve_dir, threads=1)

    def ref(texts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the long-text test truncates on purpose
            return pred.predict_proba(texts)

    return ref


class Running:
    """A uvicorn server for ``asgi`` in a thread of this process (so tests can reach into the app)."""

    def __init__(self, asgi):
        import uvicorn

        self.asgi = asgi
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(asgi, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "server never turned ready"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def engine(self):
        return self.asgi.state.engine


def make_app(serve_dir, **options):
    from fastft.serve import app

    options.setdefault("name", NAME)
    options.setdefault("threads", 1)
    return app(serve_dir, **options)


@pytest.fixture(scope="module")
def server(serve_dir):
    with Running(make_app(serve_dir, max_texts=64, max_body_bytes=64 * 1024)) as s:
        yield s.wait_ready()


def _count(histogram) -> float:
    return next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count"))


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


# -- answers ------------------------------------------------------------------------------
def test_predict_matches_predictor(server, reference):
    r = httpx.post(server.url + "/predict", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    ref = reference(TEXTS)
    labels = server.engine.labels
    assert [p["label"] for p in preds] == [labels[i] for i in ref.argmax(1)]
    got = np.array([[p["scores"][lab] for lab in labels] for p in preds])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert [p["score"] for p in preds] == pytest.approx(ref.max(1).tolist(), abs=1e-5)
    assert not any(p["truncated"] for p in preds)


def test_curl_predict(server, reference):
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            server.url + "/predict",
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps({"inputs": TEXTS[:2]}),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    preds = json.loads(out.stdout)["predictions"]
    assert [p["score"] for p in preds] == pytest.approx(reference(TEXTS[:2]).max(1).tolist(), abs=1e-5)


def assert_metadata_describes(meta: dict, response: dict) -> None:
    """Each output of a v2 response is the one the model's metadata declares: its datatype, and
    its shape where the metadata's is not -1 (a client sizes its buffers from the metadata)."""
    declared = {o["name"]: o for o in meta["outputs"]}
    for out in response["outputs"]:
        want = declared[out["name"]]
        assert out["datatype"] == want["datatype"], (out["name"], out["datatype"], want["datatype"])
        assert len(out["shape"]) == len(want["shape"]), (out["name"], out["shape"], want["shape"])
        assert all(d == -1 or d == g for d, g in zip(want["shape"], out["shape"])), (out["name"], out["shape"])


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_v2(server, reference, binary):
    import tritonclient.http as tc

    client = tc.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    meta = client.get_model_metadata(NAME)
    assert meta["inputs"][0]["name"] == "text" and meta["inputs"][0]["datatype"] == "BYTES"
    inp = tc.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=binary)
    outputs = [tc.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities", "truncated")]
    res = client.infer(NAME, [inp], outputs=outputs, request_id="r1")
    ref = reference(TEXTS)
    np.testing.assert_allclose(res.as_numpy("probabilities"), ref, atol=1e-5)
    labels = [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("label").tolist()]
    assert labels == [server.engine.labels[i] for i in ref.argmax(1)]
    assert not res.as_numpy("truncated").any()
    assert res.get_response()["id"] == "r1"
    assert_metadata_describes(meta, res.get_response())
    with pytest.raises(tc.InferenceServerException, match="unknown model"):
        client.infer("no-such-model", [inp])
    client.close()


def test_v2_plain_json_with_curl(server, reference):
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}]}
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"{server.url}/v2/models/{NAME}/infer", "-d", json.dumps(body)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    doc = json.loads(out.stdout)
    probs = next(o for o in doc["outputs"] if o["name"] == "probabilities")
    assert probs["shape"] == [2, 2]
    np.testing.assert_allclose(np.array(probs["data"]).reshape(2, 2), reference(TEXTS[:2]), atol=1e-5)


def test_concurrent_requests_each_get_their_own_answers_in_order(server, reference):
    rng = np.random.default_rng(0)
    requests = [[TEXTS[j] for j in rng.integers(0, len(TEXTS), size=rng.integers(1, 5))] for _ in range(40)]

    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/predict", json={"inputs": r}) for r in requests))

    responses = asyncio.run(go())
    for req, resp in zip(requests, responses):
        assert resp.status_code == 200
        got = [p["score"] for p in resp.json()["predictions"]]
        assert got == pytest.approx(reference(req).max(1).tolist(), abs=1e-5)


def test_queued_requests_are_merged_into_one_round(serve_dir, reference):
    """While the worker is busy, requests pile up; the next round takes them all (and splits by length)."""
    gate = threading.Event()
    with Running(make_app(serve_dir)) as s:
        s.wait_ready()
        pred = s.engine.predictor
        real = pred.logits_from_ids

        def slow_first(**feeds):
            gate.wait(10)
            return real(**feeds)

        pred.logits_from_ids = slow_first
        reqs = [[TEXTS[i % len(TEXTS)]] for i in range(12)]

        async def go():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                tasks = [asyncio.create_task(client.post("/predict", json={"inputs": r})) for r in reqs]
                deadline = time.monotonic() + 10
                taken = s.engine.metrics.queue_seconds  # count: requests a worker has picked up
                while s.engine.batcher.queued() + _count(taken) < len(reqs):  # all submitted
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                gate.set()
                return await asyncio.gather(*tasks)

        responses = asyncio.run(go())
        pred.logits_from_ids = real
        for r, resp in zip(reqs, responses):
            assert resp.json()["predictions"][0]["score"] == pytest.approx(reference(r).max(), abs=1e-5)
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "fastft_requests_per_batch_count") <= 2  # the blocked round, then all others at once
        assert metric(text, "fastft_requests_per_batch_sum") == 12
        assert metric(text, "fastft_batch_size_sum") == 12


def test_without_batching_each_request_is_answered_whole(serve_dir, reference):
    """--no-batching: a request runs on its own, in calls of at most max_batch_size texts; every
    text of it gets its own answer, the last call's too (never served in a test before: a
    mutant that never ran the last text answered it from uninitialised memory)."""
    texts = TEXTS + TEXTS[:1]  # 7 texts: calls of 3, 3 and 1
    with Running(make_app(serve_dir, batching=False, max_batch_size=3)) as s:
        s.wait_ready()
        r = httpx.post(s.url + "/predict", json={"inputs": texts})
        assert r.status_code == 200, r.text
        labels = s.engine.labels
        got = np.array([[p["scores"][lab] for lab in labels] for p in r.json()["predictions"]])
        text = httpx.get(s.url + "/metrics").text
        lengths = sorted(s.engine.batcher.encoder.encode(texts).lengths().tolist(), reverse=True)
    np.testing.assert_allclose(got, reference(texts), atol=1e-5)
    assert metric(text, "fastft_batch_size_sum") == 7 and metric(text, "fastft_batch_size_count") == 3
    # the tokens counted: each call's texts as they are, and as padded to its longest (the first)
    calls = [lengths[0:3], lengths[3:6], lengths[6:]]
    assert metric(text, "fastft_real_tokens_total") == sum(lengths)
    assert metric(text, "fastft_padded_tokens_total") == sum(len(c) * c[0] for c in calls) > sum(lengths)


def test_metrics(server):
    httpx.post(server.url + "/predict", json={"inputs": TEXTS})
    httpx.post(server.url + "/predict", content=b"{not json")
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "fastft_requests_total", route="/predict", code="200") >= 1
    assert metric(text, "fastft_errors_total", route="/predict", code="400") >= 1
    assert metric(text, "fastft_request_duration_seconds_count", route="/predict") >= 2
    for name in (
        "fastft_queue_duration_seconds_count",
        "fastft_inference_duration_seconds_count",
        "fastft_batch_size_count",
        "fastft_batch_tokens_count",
    ):
        assert metric(text, name) >= 1, name
    eff = metric(text, "fastft_padding_efficiency")
    real, padded = metric(text, "fastft_real_tokens_total"), metric(text, "fastft_padded_tokens_total")
    assert 0 < eff <= 1 and eff == pytest.approx(real / padded)
    assert metric(text, "fastft_ready") == 1
    assert "fastft_in_flight_requests" in text


def test_long_text_is_truncated_and_says_so(server, reference):
    long = "a wonderful, moving film " * 200
    r = httpx.post(server.url + "/predict", json={"inputs": ["ok", long]})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["truncated"] for p in preds] == [False, True]
    assert preds[1]["score"] == pytest.approx(reference([long]).max(), abs=1e-5)


# -- bad and hostile input ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, status, match",
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"inputs": "a fine film"}', 422, "not a single string"),
        (b'{"inputs": []}', 422, "empty"),
        (b'{"inputs": ["ok", 3]}', 422, r"\[1\] is not a string"),
        (b'{"inputs": ["ok", "  "]}', 422, "empty text"),
        (b'{"texts": ["ok"]}', 422, 'no "inputs"'),
        (b'["ok"]', 422, "JSON object"),
        (json.dumps({"inputs": ["ok"] * 65}).encode(), 413, "too many texts"),
        (json.dumps({"inputs": ["x" * 70_000]}).encode(), 413, "limit"),
        (b'{"inputs": ["ok", "bad \\ud800 text"]}', 422, r"\[1\] is not valid Unicode \(lone surrogate"),
        (b'{"inputs": [' + b"9" * 5000 + b"]}", 400, "more than 4,300 digits"),
        (b'{"inputs": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400, "nested too deeply"),
    ],
)
def test_bad_predict_requests(server, body, status, match):
    r = httpx.post(server.url + "/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    import re

    assert re.search(match, r.json()["error"]), r.json()


def test_a_body_in_an_encoding_or_charset_not_served_is_415(server):
    """A gzip body was read as "not valid JSON", plain JSON labelled gzip was served, a latin-1
    body with its charset said "not UTF-8": each is 415 naming what is not supported."""
    import gzip

    body = json.dumps({"inputs": ["a fine film"]}).encode()
    for content, headers, words in (
        (gzip.compress(body), {"content-encoding": "gzip"}, "Content-Encoding 'gzip' is not supported"),
        (body, {"content-encoding": "br"}, "Content-Encoding 'br'"),
        (
            '{"inputs": ["caf\u00e9"]}'.encode("latin-1"),
            {"content-type": "application/json; charset=latin-1"},
            "charset 'latin-1'",
        ),
    ):
        r = httpx.post(server.url + "/predict", content=content, headers=headers)
        assert r.status_code == 415 and words in r.json()["error"], r.text
    for charset in ("UTF-8", "us-ascii", "iso-8859-1"):  # an ASCII body reads alike in every one of them
        r = httpx.post(
            server.url + "/predict", content=body, headers={"content-type": f"application/json; charset={charset}"}
        )
        assert r.status_code == 200, charset


@pytest.mark.parametrize(
    "body, status, match",
    [
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400, "datatype BYTES"),
        ({"inputs": [{"name": "other", "shape": [1], "datatype": "BYTES", "data": ["ok"]}]}, 400, "unknown input"),
        ({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["ok"]}]}, 400, "says 3"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [5]}]}, 422, "not a string"),
        ({"inputs": []}, 400, "needs 'inputs'"),
        (
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}],
                "outputs": [{"name": "logits"}],
            },
            400,
            "unknown output",
        ),
        ({"inputs": [{"name": "text", "shape": [100], "datatype": "BYTES", "data": ["ok"] * 100}]}, 413, "too many"),
        ({"inputs": [{"name": "text", "shape": [2**64 + 1, 1], "datatype": "BYTES", "data": ["x"]}]}, 413, "too many"),
        ({"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}, 400, "[n, 1]"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": "ok"}]}, 400, "must be a list"),
        ({"inputs": ["text"]}, 400, "must be a tensor object"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}], "id": {}}, 400, "'id'"),
        (
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}],
                "parameters": {"binary_data_output": "false"},
            },
            400,
            "binary_data_output must be true or false",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}], "parameters": "x"},
            400,
            "request parameters must be an object",
        ),
        (
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}],
                "outputs": [{"name": "label"}, {"name": "label"}],
            },
            400,
            "asked for twice",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}], "outputs": []},
            400,
            "non-empty list",
        ),
        # data nested other than the shape says (once flattened whatever the nesting)
        (
            {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": [["ok"], ["fine"]]}]},
            400,
            "nested other than its shape [2]",
        ),
        (
            {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["ok", "fine"]]}]},
            400,
            "nested other than its shape [2, 1]",
        ),
        # Triton's classification extension: once ignored, the raw probabilities sent as if top-k labels
        (
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
            },
            400,
            "classification extension",
        ),
        (
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}],
                "parameters": {"classification": 2},
            },
            400,
            "classification extension",
        ),
    ],
)
def test_bad_v2_requests(server, body, status, match):
    r = httpx.post(f"{server.url}/v2/models/{NAME}/infer", json=body)
    assert r.status_code == status, r.text
    assert match in r.json()["error"]


def test_v2_data_flat_or_nested_as_its_shape(server):
    url = f"{server.url}/v2/models/{NAME}/infer"
    answers = []
    for shape, data in (([2], ["ok", "fine"]), ([2, 1], ["ok", "fine"]), ([2, 1], [["ok"], ["fine"]])):
        r = httpx.post(url, json={"inputs": [{"name": "text", "shape": shape, "datatype": "BYTES", "data": data}]})
        assert r.status_code == 200, r.text
        answers.append([o["data"] for o in r.json()["outputs"] if o["name"] == "label"])
    assert answers[0] == answers[1] == answers[2]


def test_bad_binary_v2_request(server):
    head = json.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 10}}]}
    ).encode()
    r = httpx.post(
        f"{server.url}/v2/models/{NAME}/infer",
        content=head + b"\x05\x00\x00\x00ab",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and "does not fit" in r.json()["error"]
    r = httpx.post(  # bytes after the tensor binary_data_size names: once ignored
        f"{server.url}/v2/models/{NAME}/infer",
        content=head.replace(b'"binary_data_size": 10', b'"binary_data_size": 6') + b"\x02\x00\x00\x00okjunk",
        headers={"Inference-Header-Content-Length": str(len(head) - 1)},
    )
    assert r.status_code == 400 and "4 bytes follow the 6-byte binary input" in r.json()["error"], r.text
    for length in (f"+{len(head)}", "_".join(str(len(head)))):  # int() reads both as the length; digits only
        r = httpx.post(
            f"{server.url}/v2/models/{NAME}/infer",
            content=head + b"\x02\x00\x00\x00ab",
            headers={"Inference-Header-Content-Length": length},
        )
        assert r.status_code == 400 and "not a decimal integer" in r.json()["error"], length


def test_unknown_model_route_and_method(server):
    for path in ("/v2/models/nope", "/v2/models/nope/ready", f"/v2/models/{NAME}/versions/7"):
        r = httpx.get(server.url + path)
        assert r.status_code == 404 and "error" in r.json(), path
    r = httpx.post(server.url + "/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = httpx.get(server.url + "/no/such/route")
    assert r.status_code == 404 and r.json() == {"error": "no route /no/such/route"}
    r = httpx.get(server.url + "/predict")
    assert r.status_code == 405 and "error" in r.json()
    # a trailing slash: a JSON 404 that says so, not a 307 whose empty body a client may be left with
    r = httpx.post(server.url + "/predict/", json={"inputs": ["a"]})
    assert r.status_code == 404 and r.json() == {"error": "no route /predict/ (routes end without '/')"}


def test_bad_requests_in_a_crowd_never_hurt_the_good_ones(server, reference):
    good = [[TEXTS[i % len(TEXTS)], TEXTS[(i + 1) % len(TEXTS)]] for i in range(16)]
    bad = [b"{oops", b'{"inputs": [1]}', b'{"inputs": []}'] * 4

    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            g = [client.post("/predict", json={"inputs": r}) for r in good]
            b = [client.post("/predict", content=x) for x in bad]
            return await asyncio.gather(*g), await asyncio.gather(*b)

    gr, br = asyncio.run(go())
    assert all(r.status_code in (400, 422) for r in br)
    for req, resp in zip(good, gr):
        assert resp.status_code == 200
        assert [p["score"] for p in resp.json()["predictions"]] == pytest.approx(
            reference(req).max(1).tolist(), abs=1e-5
        )


# -- lifecycle -------------------------------------------------------------------------------------
def test_full_queue_answers_503_with_retry_after(serve_dir):
    gate = threading.Event()
    with Running(make_app(serve_dir, max_queue=2)) as s:
        s.wait_ready()
        pred = s.engine.predictor
        real = pred.logits_from_ids
        pred.logits_from_ids = lambda **f: (gate.wait(10), real(**f))[1]

        async def go():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                first = asyncio.create_task(client.post("/predict", json={"inputs": ["ok"]}))
                while _count(s.engine.metrics.queue_seconds) < 1:  # the worker holds the first request
                    await asyncio.sleep(0.01)
                queued = [asyncio.create_task(client.post("/predict", json={"inputs": ["ok"]})) for _ in range(2)]
                while s.engine.batcher.queued() < 2:
                    await asyncio.sleep(0.01)
                over = await client.post("/predict", json={"inputs": ["ok"]})
                gate.set()
                return over, await asyncio.gather(first, *queued)

        over, done = asyncio.run(go())
        pred.logits_from_ids = real
        assert over.status_code == 503 and over.headers["retry-after"] == "1"
        assert "queue is full" in over.json()["error"]
        assert [r.status_code for r in done] == [200, 200, 200]


def test_failed_inference_is_500_for_that_batch_and_the_server_keeps_serving(serve_dir, reference):
    with Running(make_app(serve_dir)) as s:
        s.wait_ready()
        pred = s.engine.predictor
        real = pred.logits_from_ids

        def flaky(**feeds):
            if feeds["input_ids"].shape[1] > 40:  # the poison: a long text
                raise RuntimeError("simulated ONNX Runtime failure")
            out = real(**feeds)
            return out * np.nan if feeds["input_ids"].shape[1] > 30 else out  # a broken model's NaN scores

        pred.logits_from_ids = flaky
        r = httpx.post(s.url + "/predict", json={"inputs": ["word " * 60]})
        assert r.status_code == 500 and "inference failed" in r.json()["error"]
        r = httpx.post(s.url + "/predict", json={"inputs": ["word " * 35]})  # NaN answered label 0 as chosen
        assert r.status_code == 500 and "scores are not finite" in r.json()["error"]
        r = httpx.post(s.url + "/predict", json={"inputs": TEXTS[:1]})
        assert r.status_code == 200
        assert r.json()["predictions"][0]["score"] == pytest.approx(reference(TEXTS[:1]).max(), abs=1e-5)
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "fastft_errors_total", route="/predict", code="500") == 2


def test_ready_only_after_warm_up(serve_dir):
    asgi = make_app(serve_dir)
    gate = threading.Event()
    batcher = asgi.state.engine.batcher
    real = batcher.warm_up
    batcher.warm_up = lambda **kw: (gate.wait(10), real(**kw))
    with Running(asgi) as s:
        assert httpx.get(s.url + "/v2/health/live").status_code == 200
        assert httpx.get(s.url + "/v2/health/ready").status_code == 503
        assert httpx.get(f"{s.url}/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": False}
        r = httpx.post(s.url + "/predict", json={"inputs": ["ok"]})
        assert r.status_code == 503 and "warming up" in r.json()["error"] and r.headers["retry-after"] == "1"
        gate.set()
        s.wait_ready(10)
        assert httpx.post(s.url + "/predict", json={"inputs": ["ok"]}).status_code == 200


def test_a_stop_during_warm_up_ends_it_before_the_process_exits(serve_dir):
    """SIGTERM while the cost table was measured (about 12 s for an fp32 graph) let the process exit
    inside ONNX Runtime's run on the warm-up thread: C++ terminate, exit 134. The warm-up now stops
    at its next call, and the engine's stop waits for it."""
    asgi = make_app(serve_dir)
    engine = asgi.state.engine
    calls, started = [], threading.Event()
    real = engine.batcher.predictor.logits_from_ids

    def slow(**kw):  # each warm-up call takes a while, as a big graph's do
        calls.append(1)
        started.set()
        time.sleep(0.2)
        return real(**kw)

    engine.batcher.predictor.logits_from_ids = slow
    engine.start()
    assert started.wait(10)
    t = time.monotonic()
    engine.stop()
    assert not engine._warm.is_alive() and time.monotonic() - t < 5 and not engine.ready
    assert len(calls) < 8  # it stopped, not ran its course


def wait_ready_process(proc: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
    """Until a ``fastft serve`` process answers ready (failing with its stderr if it exits first)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/v2/health/ready").status_code == 200:
                return
        assert time.monotonic() < deadline, "server never turned ready"
        time.sleep(0.05)


def test_sigterm_drains_in_flight_requests_and_exits_0(serve_dir, reference):
    """A real ``fastft serve`` process: SIGTERM while requests are in flight; all answered, exit 0.
    A request whose body is still arriving is answered 503 at once, not held to its body timeout
    (120 s here: past uvicorn's 60 s grace and this test's wait for the exit)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastft",
            "serve",
            str(serve_dir),
            "--port",
            str(port),
            "--name",
            NAME,
            "--threads",
            "1",
            "--max-texts",
            "256",
            "--json-logs",
            "--body-timeout",
            "120",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_ready_process(proc, url)
        long = "brilliant acting and a great story, i loved every minute of it " * 12
        reqs = [[long] * 64 for _ in range(8)]
        answered = []

        async def go():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:

                async def one(r):
                    resp = await client.post("/predict", json={"inputs": r})
                    answered.append(resp)
                    return resp

                tasks = [asyncio.create_task(one(r)) for r in reqs]
                while True:  # every request accepted by the server (in its handler or queue), the stalled one too
                    m = (await client.get("/metrics")).text
                    if metric(m, "fastft_in_flight_requests") + len(answered) >= len(reqs) + 1:
                        break
                    await asyncio.sleep(0.005)
                before = len(answered)
                proc.send_signal(signal.SIGTERM)
                return before, await asyncio.gather(*tasks)

        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"inputs": ["a')
        stalled.settimeout(60)
        before, responses = asyncio.run(go())
        rc = proc.wait(60)
        err = proc.stderr.read()
        answer = stalled.recv(4096)
        stalled.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert answer.startswith(b"HTTP/1.1 503") and b"shutting down" in answer, answer
    assert before < len(reqs), "every request finished before SIGTERM: the test did not test draining"
    assert [r.status_code for r in responses] == [200] * len(reqs)
    assert all(len(r.json()["predictions"]) == 64 for r in responses)
    assert rc == 0, err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]  # --json-logs: one object a line
    messages = [d["message"] for d in logs]
    assert any("draining" in m for m in messages) and any(m.startswith("ready:") for m in messages), err
    assert all({"ts", "level", "logger", "message"} <= set(d) for d in logs)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/v2/health/live")


# -- the batcher's cost model, the CLI, the import floor ---------------------------------------------------
def test_cost_model_merges_only_where_it_pays():
    from fastft.serve.cost import CostModel

    n = np.arange(65, dtype=float)[:, None]
    w = np.arange(129, dtype=float)[None, :]
    overhead = CostModel(100 + n * w, 64, 8192, "test")
    assert overhead.plan(np.array([10, 10, 10, 9])) == [(0, 4)]  # equal lengths: one call
    assert overhead.plan(np.array([120, 5, 5, 5])) == [(0, 1), (1, 4)]  # the long one alone
    no_gain = CostModel(n * (5 + w), 64, 8192, "test")  # a call costs the same per text at any size
    assert no_gain.plan(np.array([20, 10])) == [(0, 1), (1, 2)]  # padding 10 to 20 buys nothing
    budget = CostModel(100 + n * w, 64, 40, "test")  # token budget: 40 padded tokens per call
    assert all((e - s) * 10 <= 40 for s, e in budget.plan(np.full(10, 10)))


def test_cost_model_measures_and_shrugs_off_a_busy_moment():
    from fastft.serve.cost import CostModel

    seen = collections.Counter()

    def run(n, w):  # 1 ms per call + 0.1 ms per padded token; the first sight of (4, 32) is disturbed
        seen[(n, w)] += 1
        return 1e-3 + 1e-4 * n * w + (5.0 if (n, w) == (4, 32) and seen[(n, w)] == 1 else 0.0)

    cost = CostModel.measure(run, max_batch_size=16, max_length=64, max_batch_tokens=512)
    assert cost.source == "measured" and max(seen.values()) == 3  # three sweeps
    assert not any(n * w > 512 and n > 1 for n, w in seen)  # never beyond the token budget
    assert cost.table[4, 32] == pytest.approx(1e-3 + 1e-4 * 128)  # the fastest of its sweeps
    assert cost.plan(np.array([12, 12, 11, 10])) == [(0, 4)]  # the 1 ms call overhead makes merging pay
    assert cost.plan(np.array([64, 8])) == [(0, 1), (1, 2)]  # padding 8 to 64 costs more than a call


def test_cost_model_bounds_the_token_budget_and_extrapolates_per_text():
    """The token budget is inclusive (n * w == max_batch_tokens may share a call); a text longer
    than the budget alone is still timed and runs alone; beyond the batch sizes a width could be
    measured at, a call's cost grows with its texts (it was the last measured call's, flat)."""
    from fastft.serve.cost import CostModel

    n = np.arange(65, dtype=float)[:, None]
    w = np.arange(129, dtype=float)[None, :]
    exact = CostModel(100 + n * w, 64, 40, "test")
    assert exact.plan(np.array([10, 10, 10, 10])) == [(0, 4)]  # 4 x 10 = 40 tokens: one call
    seen = set()

    def run(n, w):  # 0.1 ms per padded token
        seen.add((n, w))
        return 1e-4 * n * w

    cost = CostModel.measure(run, max_batch_size=16, max_length=64, max_batch_tokens=48, budget_s=0)
    assert (1, 64) in seen  # one text of 64 tokens, past the 48-token budget: timed all the same
    assert max(n for n, w in seen if w == 64) == 1  # no pair of them: beyond the budget
    assert cost.table[16, 64] == pytest.approx(1e-4 * 16 * 64)  # 16 of them, extrapolated per text
    assert cost.plan(np.array([64])) == [(0, 1)]


def test_import_floor_serving_never_loads_training(serve_dir):
    code = (
        f"import sys, fastft.serve, fastft.serve.routes, fastft.serve.server\n"
        f"from fastft.serve import app\n"
        f"app({str(serve_dir)!r}, threads=1)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[:2] in "
        f"[['fastft', x] for x in ('train', 'compress', 'export', 'bench', 'cli')])\n"
        f"print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_cli_serve_help_and_mistakes(tmp_path, serve_dir, capsys):
    from fastft.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0 and "--max-batch-tokens" in capsys.readouterr().out
    for argv, msg in [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path)], "no config.json"),
        ([str(serve_dir), "--max-batch-tokens", "0"], "--max-batch-tokens must be a positive"),
        ([str(serve_dir), "--precision", "int8", "--port", "0"], "no model_int8.onnx"),  # 8080 may be taken
        ([str(serve_dir), "--replicas", "2"], "need --ray"),
        ([str(serve_dir), "--max-batch-size", "1000000000"], "--max-batch-size must be at most 4096"),
        ([str(serve_dir), "--threads", "1000000000000"], "--threads must be at most 1024"),
        ([str(serve_dir), "--workers", "100000"], "--workers must be at most 256"),
        ([str(serve_dir), "--max-body-kb", "2000000"], "--max-body-kb must be between 1 and 1048576"),
        ([str(serve_dir), "--body-timeout", "0"], "--body-timeout must be in (0, 3600] seconds"),
        ([str(serve_dir), "--header-timeout", "nan"], "--header-timeout must be in (0, 3600] seconds"),
        ([str(serve_dir), "--host", "192.0.2.1"], "pick another --host"),
        ([str(serve_dir), "--host", "999.1.1.1", "--port", "0"], "does not resolve"),  # port 0 checked the host too
        ([str(serve_dir), "--name", "a" * 129], "1 to 128 letters"),
    ]:
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastft: error:") and msg in err and len(err.strip().splitlines()) == 1, err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", str(serve_dir), "--port", str(busy.getsockname()[1])]) == 2
    assert "is in use" in capsys.readouterr().err


@pytest.fixture(scope="module")
def int8_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model exported with its dynamically quantised INT8 graph as the served default."""
    from fastft.export import export

    out = tmp_path_factory.mktemp("serve-int8") / "tiny-int8"
    export(tiny_model_dir, out, int8=True, overwrite=True, progress=False, validate=False, fused_attention=False)
    return out


def test_dynamic_int8_answers_never_depend_on_other_requests(int8_dir):
    """A dynamic INT8 graph computes its activation scales over the whole call: merged with other
    clients' texts, a text's scores would move with theirs. The server runs each text alone
    (each call one text), so concurrent requests get exactly what each text gets on its own."""
    import fastft

    alone = fastft.load(int8_dir, int8=True, threads=1)
    texts = [TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(12)]
    want = [alone.predict_proba([t])[0] for t in texts]
    with Running(make_app(int8_dir, precision="int8")) as s:
        s.wait_ready()
        assert s.engine.predictor.isolated
        before = metric(httpx.get(s.url + "/metrics").text, "fastft_batch_size_count")

        async def go():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                reqs = [client.post("/predict", json={"inputs": texts[k : k + 3]}) for k in range(0, 12, 3)]
                return await asyncio.gather(*reqs)

        for k, r in zip(range(0, 12, 3), asyncio.run(go())):
            for j, pred in enumerate(r.json()["predictions"]):
                assert list(pred["scores"].values()) == pytest.approx(want[k + j].tolist(), abs=1e-6)
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "fastft_batch_size_count") - before == 12  # twelve calls of one text
    with Running(make_app(int8_dir, precision="int8", batch_int8=True)) as s:
        assert not s.wait_ready().engine.predictor.isolated


def guarded(asgi) -> Running:
    """A :class:`Running` server with the protocol ``fastft serve`` runs (the connection guard)."""
    import uvicorn

    from fastft.serve.server import uvicorn_config

    server = Running(asgi)
    config = uvicorn_config(asgi, asgi.state.config, host="127.0.0.1", port=server.port, log_level="warning")
    server.server = uvicorn.Server(config)
    server.thread = threading.Thread(target=server.server.run, daemon=True)
    return server


def test_request_lines_of_other_forms_and_versions(serve_dir):
    """The absolute form (RFC 9112 3.2.2: a server must accept it) is routed by its path (it was a
    404 for /http://host/...); HTTP/2's preface and other versions are 505, the asterisk form 400
    (405 for OPTIONS), each closed (they were HTTP/1.1 404s)."""

    server = guarded(make_app(serve_dir))  # the protocol fastft serve runs (h11)

    def ask(line: bytes, body: bytes = b"") -> bytes:
        c = socket.create_connection(("127.0.0.1", server.port))
        head = line + b"\r\nHost: x\r\n"
        if body:
            head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        c.sendall(head + b"\r\n" + body)
        c.settimeout(10)
        got = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
        c.close()
        return got

    with server:
        server.wait_ready()
        assert ask(b"GET http://x/v2/health/live HTTP/1.1").endswith(b'{"live":true}')
        assert ask(b"GET HTTPS://x:8080 HTTP/1.1").startswith(b"HTTP/1.1 200")  # the root: the model's summary
        got = ask(b"POST http://x/predict?a=1 HTTP/1.1", json.dumps({"inputs": ["a fine film"]}).encode())
        assert got.startswith(b"HTTP/1.1 200") and b'"predictions"' in got, got
        for line, status, words in (
            (b"PRI * HTTP/2.0", b"505", b"HTTP/2.0 is not served here"),
            (b"GET /v2/health/live HTTP/3.0", b"505", b"HTTP/3.0"),
            (b"GET * HTTP/1.1", b"400", b"GET * is not served here"),
            (b"OPTIONS * HTTP/1.1", b"405", b"OPTIONS *"),
        ):
            got = ask(line)
            assert got.startswith(b"HTTP/1.1 " + status) and words in got and b"connection: close" in got.lower(), got


def test_a_client_that_reads_none_of_its_answers_is_let_go(serve_dir):
    """Thousands of pipelined requests on a connection that reads nothing filled the send buffers
    (8.4 MB on three sockets) and held them for ever: closed once nothing was read for the body
    timeout, and other clients are served meanwhile."""
    server = guarded(make_app(serve_dir, body_timeout_s=1.0))
    with server:
        server.wait_ready()
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect(("127.0.0.1", server.port))
        c.setblocking(False)
        flood, sent, t = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3000, 0, time.monotonic()
        while sent < len(flood) and time.monotonic() - t < 3:
            with contextlib.suppress(BlockingIOError):
                sent += c.send(flood[sent:])
            time.sleep(0.001)
        assert httpx.get(server.url + "/v2/health/live").status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # read nothing until the server closes: then the socket resets
            time.sleep(0.5)
            if "write_timeout" in httpx.get(server.url + "/metrics").text:
                break
        assert 'fastft_connections_closed_total{reason="write_timeout"} 1.0' in httpx.get(server.url + "/metrics").text
        c.close()


def test_slow_idle_and_departing_clients_are_let_go(serve_dir):
    """A connection whose request head has not arrived within --header-timeout is answered 408 and
    closed (idle ones too); a body that stalls gets 408; an unfinished head beyond 64 KiB gets 431
    (the server buffers no more of it) and a malformed request 400, both JSON; a client
    that leaves mid-body is counted as 499, not as a server error."""
    from fastft.serve.config import MAX_HEAD_BYTES

    server = guarded(make_app(serve_dir, header_timeout_s=0.5, body_timeout_s=1.5))

    def raw(data: bytes) -> socket.socket:
        c = socket.create_connection(("127.0.0.1", server.port))
        c.sendall(data)
        c.settimeout(10)
        return c

    with server:
        server.wait_ready()
        head = raw(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        idle = raw(b"")
        body = raw(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"inputs": ["a')
        for c in (head, idle, body):
            answer = c.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"connection: close" in answer.lower()
            c.close()
        # a pipelined request whose head has arrived is not cut off by the head timer while its body comes
        one = b'{"inputs": ["fine"]}'
        pipe = raw(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(one), one)
            + b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(one), one[:5])
        )
        time.sleep(1.0)  # past the head timeout, within the body's
        pipe.sendall(one[5:])
        got = b""
        while got.count(b"HTTP/1.1 ") < 2 or not got.endswith(b"}"):
            chunk = pipe.recv(4096)
            assert chunk, got
            got += chunk
        assert got.count(b"HTTP/1.1 200") == 2 and b"408" not in got, got
        pipe.close()
        # requests HTTP cannot parse: JSON errors like every other, h11's status, nothing echoed at length
        big = raw(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * MAX_HEAD_BYTES))  # never ends
        bad = raw(b"GARBAGE " + b"x" * 5000 + b"\r\n\r\n")
        no_host = raw(b"GET /v2/health/live HTTP/1.1\r\n\r\n")
        # a complete head a little past the limit, in one write: h11 limits only an incomplete one
        whole = raw(
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 5000) + b"\r\n\r\n"
        )
        query = raw(b"GET /v2/health/live?q=" + b"a" * (MAX_HEAD_BYTES + 5000) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        for c, status, words in (
            (big, 431, f"more than {MAX_HEAD_BYTES} bytes"),
            (whole, 431, f"more than {MAX_HEAD_BYTES} bytes"),
            (query, 431, f"more than {MAX_HEAD_BYTES} bytes"),
            (bad, 400, "malformed HTTP request: illegal request line"),
            (no_host, 400, "Host"),
        ):
            answer = b""
            with contextlib.suppress(ConnectionResetError):  # closed with the rest of our request unread
                while chunk := c.recv(65536):  # the server closes after answering
                    answer += chunk
            c.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d" % status), head
            assert b"content-type: application/json" in head.lower() and b"connection: close" in head.lower()
            assert words in json.loads(body)["error"] and len(body) < 300, body
        gone = raw(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{"inputs": ["hal')
        gone.close()
        deadline = time.monotonic() + 10

        def departed() -> float:
            text = httpx.get(server.url + "/metrics").text
            return metric(text, "fastft_requests_total", code="499", route="/predict")

        while departed() < 1:
            assert time.monotonic() < deadline, "the departed client was not counted"
            time.sleep(0.05)
        text = httpx.get(server.url + "/metrics").text
        assert metric(text, "fastft_requests_total", code="500", route="/predict") == 0
        assert metric(text, "fastft_connections_closed_total", reason="head_timeout") == 2  # the stalled head, the idle
        assert metric(text, "fastft_connections_closed_total", reason="malformed") == 3
        r = httpx.post(server.url + "/predict", json={"inputs": ["still serving"]})
        assert r.status_code == 200
        with httpx.Client(base_url=server.url) as keep_alive:  # one connection, requests 0.2 s apart
            for _ in range(4):
                assert keep_alive.post("/predict", json={"inputs": ["again"]}).status_code == 200
                time.sleep(0.2)


def test_index_names_files_not_the_servers_directories_and_errors_do_not_echo_megabytes(server, serve_dir):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and str(serve_dir) not in r.text and r.json()["runtime"]["path"] == serve_dir.name
    r = httpx.get(f"{server.url}/v2/models/{'x' * 20_000}")
    assert r.status_code == 404 and len(r.text) < 400, len(r.text)


def test_hostile_connections_cannot_lock_an_address_out_or_waste_inference(serve_dir):
    """What a client (or many behind one proxy address) can do to the connection guard: WebSocket
    upgrades are ordinary requests that give their slot back; a request answered before its body
    is read (404, 413) is closed after a short linger, and a client still writing gets the answer,
    not a reset; a request with both framings is refused and closed; connections past the cap get
    a JSON 503; a client that leaves while its texts wait is dropped (499), not inferred for nobody."""
    import http.client

    asgi = make_app(serve_dir, max_connections=64, max_body_bytes=64 * 1024, header_timeout_s=5.0)
    server = guarded(asgi)
    cap = 16  # a quarter of max_connections, at least 16

    def raw(data: bytes) -> socket.socket:
        c = socket.create_connection(("127.0.0.1", server.port))
        c.sendall(data)
        c.settimeout(10)
        return c

    def until_closed(c: socket.socket) -> bytes:
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := c.recv(65536):
                got += chunk
        return got

    with server:
        server.wait_ready()
        upgrade = (
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        for _ in range(3 * cap):  # each slot must come back (uvicorn's WebSocket protocol kept them)
            c = raw(upgrade)
            assert c.recv(4096).startswith(b"HTTP/1.1 200"), "an upgrade request is an ordinary request"
            c.close()
        assert httpx.get(server.url + "/v2/health/live").status_code == 200

        # answered before its body (unknown route): closed after the answer, though more body comes
        early = raw(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
        answer = early.recv(4096)
        assert answer.startswith(b"HTTP/1.1 404") and b"connection: close" in answer.lower(), answer
        t = time.monotonic()
        early.sendall(b"x" * 1000)
        until_closed(early)
        assert time.monotonic() - t < 8, "the connection was held open"
        early.close()

        # a 413 reaches a client that writes its whole body first (http.client), not as a reset
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request(
                "POST", "/predict", body=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/json"}
            )
            r = conn.getresponse()
            assert r.status == 413 and "limit" in json.loads(r.read())["error"]
            conn.close()

        # Transfer-Encoding and Content-Length together: 400, closed (no second request on it)
        both = raw(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        got = until_closed(both)
        both.close()
        assert got.startswith(b"HTTP/1.1 400") and got.count(b"HTTP/1.1") == 1, got
        assert b"Transfer-Encoding and Content-Length" in got and b"connection: close" in got.lower()

        # past the per-address cap: a JSON 503 with Retry-After, then closed
        held = [raw(b"") for _ in range(cap)]
        time.sleep(0.2)
        over = until_closed(raw(b""))
        head, _, body = over.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after:" in head.lower(), over
        assert "too many connections" in json.loads(body)["error"]
        for c in held:
            c.close()

        # a client that leaves while its texts wait in the queue: dropped, counted 499
        predictor = server.engine.predictor
        calls, run = [], predictor.logits_from_ids

        def slow(**feeds):
            calls.append(len(feeds["input_ids"]))
            time.sleep(0.5)
            return run(**feeds)

        predictor.logits_from_ids = slow
        try:
            busy = threading.Thread(
                target=httpx.post, args=(server.url + "/predict",), kwargs={"json": {"inputs": ["a"]}}
            )
            busy.start()
            deadline = time.monotonic() + 10
            while not calls:  # the worker is in that call now (a fixed sleep was too short under load)
                assert time.monotonic() < deadline, "the busy request never reached the model"
                time.sleep(0.01)
            doc = json.dumps({"inputs": ["left before the answer"] * 8}).encode()
            gone = raw(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(doc), doc))
            time.sleep(0.1)
            gone.close()
            busy.join(10)
            deadline = time.monotonic() + 10
            while (
                metric(httpx.get(server.url + "/metrics").text, "fastft_requests_total", code="499", route="/predict")
                < 1
            ):
                assert time.monotonic() < deadline, "the departed client was not counted"
                time.sleep(0.05)
            time.sleep(0.6)
            assert sum(calls) == 1, calls  # the busy request's text only: the 8 left were never run
        finally:
            predictor.logits_from_ids = run
        text = httpx.get(server.url + "/metrics").text
        assert metric(text, "fastft_connections_closed_total", reason="over_limit") == 1
        assert httpx.post(server.url + "/predict", json={"inputs": ["still serving"]}).status_code == 200


def test_texts_without_tokens_and_unsendable_ids_are_refused(server):
    for body, route in (
        (b'{"inputs": ["fine", "\\u200b\\u200b"]}', "/predict"),
        (b'{"inputs": ["\\u0000"]}', "/predict"),
        (
            b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["\\u200b"]}]}',
            f"/v2/models/{NAME}/infer",
        ),
    ):
        r = httpx.post(server.url + route, content=body)
        assert r.status_code == 422 and "has no tokens" in r.json()["error"], r.text
    body = b'{"id": "req-\\ud800", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}]}'
    r = httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=body)
    assert r.status_code == 400 and "'id' is not valid Unicode" in r.json()["error"], r.text


def _serve_with_sighup(serve_dir, disposition):
    """A ``fastft serve`` process started with SIGHUP at ``disposition`` (a child inherits an
    ignored signal: nohup's), its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "fastft", "serve", str(serve_dir), "--port", str(port), "--threads", "1"]
    before = signal.signal(signal.SIGHUP, disposition)  # (the test runner may itself run under nohup)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGHUP, before)
    return proc, f"http://127.0.0.1:{port}"


def test_sighup_drains_like_sigterm(serve_dir):
    """A closed terminal (SIGHUP) stops the server as SIGTERM does, exit 0; it was raised inside
    whichever request was running (a 500, the server serving on) or stopped it without a drain."""
    proc, url = _serve_with_sighup(serve_dir, signal.SIG_DFL)
    try:
        wait_ready_process(proc, url)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGHUP: draining" in err and "Traceback" not in err, err[-2000:]


def test_a_server_started_under_nohup_outlives_its_terminal(serve_dir):
    """``nohup fastft serve DIR &``: SIGHUP is ignored, and the server took it back and stopped when
    the terminal closed. It serves on; SIGTERM still drains."""
    proc, url = _serve_with_sighup(serve_dir, signal.SIG_IGN)
    try:
        wait_ready_process(proc, url)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        r = httpx.post(url + "/predict", json={"inputs": ["still here"]}, timeout=30)
        assert r.status_code == 200 and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "SIGHUP" not in err, err[-2000:]


# -- protocol and routes without a model ----------------------------------------------------------
def _v2_body(texts, **extra) -> bytes:
    tensor = {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def test_exactly_max_texts_is_served_one_more_is_413():
    """--max-texts is the most a request may hold: that many pass, on /predict and on v2 alike."""
    from fastft.serve.protocol import BadRequest, check_texts, parse_infer

    assert check_texts(["a", "b"], 2) == ["a", "b"]
    assert parse_infer(_v2_body(["a", "b"]), None, 2).texts == ["a", "b"]
    for call in (lambda: check_texts(["a", "b", "c"], 2), lambda: parse_infer(_v2_body(["a", "b", "c"]), None, 2)):
        with pytest.raises(BadRequest, match="too many texts") as exc:
            call()
        assert exc.value.status == 413


def test_a_header_length_that_spans_the_whole_body_is_a_json_only_request():
    """Inference-Header-Content-Length equal to the body's length (no binary part) is a valid request."""
    from fastft.serve.protocol import parse_infer

    body = _v2_body(["ok"])
    assert parse_infer(body, str(len(body)), 4).texts == ["ok"]


def test_binary_bytes_past_the_last_element_are_refused():
    """A binary BYTES tensor holding more than its shape's elements is a 400, not silently cut short;
    an empty last element is an empty text (422), not a tensor cut short."""
    import struct

    from fastft.serve.protocol import BadRequest, parse_infer

    def request(blob: bytes, n: int):
        tensor = {"name": "text", "shape": [n], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}
        head = json.dumps({"inputs": [tensor]}).encode()
        return parse_infer(head + blob, str(len(head)), 4)

    ok = struct.pack("<I", 2) + b"ok"
    assert request(ok, 1).texts == ["ok"]
    with pytest.raises(BadRequest, match="has 3 bytes after its 1 elements"):
        request(ok + b"xyz", 1)
    with pytest.raises(BadRequest, match=r"\[1\] is an empty text") as exc:
        request(ok + struct.pack("<I", 0), 2)
    assert exc.value.status == 422


def test_binary_data_output_is_the_default_of_each_output_asked_for():
    """The request's binary_data_output applies to the outputs it names without their own binary_data."""
    from fastft.serve.protocol import parse_infer

    body = _v2_body(
        ["ok"],
        parameters={"binary_data_output": True},
        outputs=[{"name": "label"}, {"name": "truncated", "parameters": {"binary_data": False}}],
    )
    req = parse_infer(body, None, 4)
    assert req.outputs == ["label", "truncated"] and req.binary == {"label": True, "truncated": False}


def test_v2_answer_gives_each_text_its_own_label_and_probabilities_n_by_labels():
    """Labels follow each text's own argmax, probabilities are [n, num_labels], and an id "" is echoed."""
    from fastft.serve.protocol import InferRequest, infer_response

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]], dtype=np.float32)
    req = InferRequest(["a", "b", "c"], ["label", "probabilities", "truncated"], {}, "")
    body, headers = infer_response(req, "tiny", ["neg", "pos"], probs, [False, True, False])
    doc = json.loads(body)
    out = {o["name"]: o for o in doc["outputs"]}
    assert headers["content-type"] == "application/json" and doc["id"] == ""
    assert out["label"]["data"] == ["neg", "pos", "pos"] and out["label"]["shape"] == [3]
    assert out["probabilities"]["shape"] == [3, 2]
    np.testing.assert_allclose(np.array(out["probabilities"]["data"]).reshape(3, 2), probs)
    assert out["truncated"]["data"] == [False, True, False]


def test_model_metadata_names_the_onnx_platform_and_the_probabilities_width(server):
    """An ONNX model is ``onnxruntime_onnx`` and its probabilities are [-1, num_labels] (clients size buffers by it)."""
    meta = httpx.get(f"{server.url}/v2/models/{NAME}").json()
    assert meta["platform"] == "onnxruntime_onnx"
    probs = next(o for o in meta["outputs"] if o["name"] == "probabilities")
    assert probs["shape"] == [-1, len(server.engine.labels)]


class _FakeEngine:
    """What build_app needs of an engine, answering every text [0.25, 0.75] at once."""

    labels = ["neg", "pos"]
    name = "fake"
    platform = "onnxruntime_onnx"
    per_token = False
    draining = False

    def __init__(self, ready=True):
        self.ready = ready

    async def infer(self, texts):
        import types

        return types.SimpleNamespace(probs=np.array([[0.25, 0.75]] * len(texts)), truncated=[False] * len(texts))


def _ask(engine, requests, **config):
    """(status, json) of each (method, path, body, headers) request to build_app over ``engine``."""
    from fastft.serve.config import ServeConfig
    from fastft.serve.metrics import ServeMetrics
    from fastft.serve.routes import build_app

    asgi = build_app(engine, ServeConfig(**config), ServeMetrics(), lifespan=False)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t") as client:
            return [await client.request(m, p, content=b, headers=h) for m, p, b, h in requests]

    return [(r.status_code, r.json()) for r in asyncio.run(go())]


def test_a_body_of_exactly_the_limit_is_read():
    """--max-body-bytes is the largest body served: one of exactly that many bytes is answered, one more is 413."""
    body = json.dumps({"inputs": ["a fine film"]}).encode()
    padded = body[:-1] + b" " * 10 + b"}"
    got = _ask(_FakeEngine(), [("POST", "/predict", padded, {})], max_body_bytes=len(padded))
    assert got[0][0] == 200 and got[0][1]["predictions"][0]["label"] == "pos"
    got = _ask(_FakeEngine(), [("POST", "/predict", padded, {})], max_body_bytes=len(padded) - 1)
    assert got[0][0] == 413


def test_utf8_named_any_way_is_utf8():
    """A non-ASCII body labelled ``Charset=UTF8`` or ``charset=utf8`` is read, not refused as another charset."""
    body = json.dumps({"inputs": ["caf\u00e9"]}, ensure_ascii=False).encode()
    requests = [
        ("POST", "/predict", body, {"content-type": f"application/json; {c}"}) for c in ("charset=utf8", "Charset=UTF8")
    ]
    requests.append(("POST", "/predict", body, {"content-type": "application/json; Charset=latin-1"}))
    assert [status for status, _ in _ask(_FakeEngine(), requests)] == [200, 200, 415]


def test_a_model_not_ready_answers_503_on_its_ready_route():
    """``/v2/models/{name}/ready`` is 503 while the model is not ready (a status probe reads the code, not the body)."""
    got = _ask(_FakeEngine(ready=False), [("GET", "/v2/models/fake/ready", b"", {})])
    assert got == [(503, {"name": "fake", "ready": False})]


# -- the batcher on its own, with a fake predictor ------------------------------------------------
class FakePredictor:
    """A stand-in for fastft's Predictor: each text's logits come from its own tokens only
    (its length and the sum of its ids), so any text's right answer is known, whatever it ran beside."""

    labels = ["a", "b", "c"]
    max_length = 32

    def __init__(self, fail_wider_than=None, isolated=False):
        from fastft.models import load_tokenizer

        self.tokenizer = load_tokenizer("minilm-l6")
        self.fail_wider_than = fail_wider_than
        self.isolated = isolated
        self.calls = []  # (texts, width, real tokens) of each call

    def logits_from_ids(self, input_ids, attention_mask, token_type_ids):
        self.calls.append((input_ids.shape[0], input_ids.shape[1], int(attention_mask.sum())))
        if self.fail_wider_than is not None and input_ids.shape[1] > self.fail_wider_than:
            raise RuntimeError("simulated ONNX Runtime failure")
        n = attention_mask.sum(1).astype(np.float32)
        s = ((input_ids * attention_mask).sum(1) % 97).astype(np.float32)
        return np.stack([np.zeros_like(n), n / 10, s / 10], axis=1)

    def expected(self, texts):
        from fastft.core.numerics import softmax

        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return softmax(np.array([[0.0, len(x) / 10, (sum(x) % 97) / 10] for x in ids], dtype=np.float32))


def _jobs(batcher, requests):
    from fastft.serve.batcher import _Job

    jobs = [_Job(texts, None, None) for texts in requests]
    for j in jobs:
        batcher._encode(j)
    return jobs


def test_batcher_gather_keeps_to_the_token_and_text_limits_and_hands_back_what_does_not_fit():
    """_gather takes queued requests while their texts and tokens (the first request's included) fit
    the limits, and returns the first that does not fit (run next): never a round over a limit."""
    from fastft.serve.batcher import Batcher

    pred = FakePredictor()
    first, *queued = _jobs(Batcher(pred), [["a fine film"], ["meh"], ["ok"], ["funny, warm and smart"]])
    assert [sum(map(len, j.enc.ids)) for j in [first, *queued]] == [5, 4, 3, 7]
    batcher = Batcher(pred, max_batch_tokens=10)  # 5 + 4 fit, 3 more would not
    for j in queued:
        batcher._queue.put_nowait(j)
    jobs = [first]
    assert batcher._gather(jobs) is queued[1]
    assert jobs == [first, queued[0]] and batcher.queued() == 1
    first, wide = _jobs(batcher, [["a fine film"], ["meh", "ok", "x"]])
    batcher = Batcher(pred, max_batch_size=3)  # 1 text + 3 texts: one too many
    batcher._queue.put_nowait(wide)
    jobs = [first]
    assert batcher._gather(jobs) is wide and jobs == [first]


def test_batcher_gather_waits_at_most_max_wait_ms_for_more_requests(monkeypatch):
    """With max_wait_ms, _gather waits for a next request at most that long (in seconds: 0.05), never
    without a timeout; without it, it does not block at all (only what is already queued). The
    batcher's clock stands still here: a stall of the loaded machine between its two readings would
    otherwise leave no time to wait."""
    import queue
    import types

    from fastft.serve import batcher as batcher_module
    from fastft.serve.batcher import Batcher

    still = types.SimpleNamespace(perf_counter=lambda: 100.0, monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(batcher_module, "time", still)

    waits = []

    def get(block=True, timeout=None):
        waits.append((block, timeout))
        raise queue.Empty

    pred = FakePredictor()
    for ms, most in ((50, 0.05), (0, None)):
        batcher = Batcher(pred, max_wait_ms=ms)
        batcher._queue.get = get
        jobs = _jobs(batcher, [["a fine film"]])
        assert batcher._gather(jobs) is None and len(jobs) == 1
        block, timeout = waits.pop()
        assert not waits
        assert (not block) if most is None else (block and timeout == pytest.approx(most))  # no wait / bounded


def test_batcher_runs_the_request_it_could_not_fit_and_a_stop_answers_every_queued_one():
    """A request _gather hands back runs in the next round (never dropped), and a stop while requests
    are queued lets the worker answer them all with their own results before it exits."""
    from fastft.serve.batcher import Batcher

    pred = FakePredictor()
    gate, real = threading.Event(), pred.logits_from_ids

    def held(**feeds):
        gate.wait(30)
        return real(**feeds)

    pred.logits_from_ids = held
    batcher = Batcher(pred, max_batch_tokens=10)  # requests of 5, 4, 3, 7, 3, 5 tokens: 3 rounds at least
    requests = [["a fine film"], ["meh"], ["ok"], ["funny, warm and smart"], ["x"], ["a fine film"]]
    batcher.start()

    async def go():
        futures = [batcher.submit(r) for r in requests]
        stop = threading.Thread(target=batcher.stop)
        stop.start()
        while not batcher._stopped.is_set():
            await asyncio.sleep(0.01)
        gate.set()  # the worker, held in its first call, sees the stop with requests still queued
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)
        await asyncio.to_thread(stop.join, 30)
        return results

    results = asyncio.run(go())
    for r, got in zip(requests, results):
        assert not isinstance(got, BaseException), got
        np.testing.assert_allclose(got.probs, pred.expected(r), atol=1e-6)


def test_batcher_stop_answers_a_request_no_worker_took_and_refuses_new_ones():
    """Stopped with no worker running, a queued request is answered ShuttingDown (not left hanging),
    and a request submitted after the stop is refused."""
    from fastft.serve.batcher import Batcher, ShuttingDown

    batcher = Batcher(FakePredictor())

    async def go():
        future = batcher.submit(["a fine film"])
        batcher.stop(timeout=1)
        await asyncio.sleep(0)
        assert future.done() and isinstance(future.exception(), ShuttingDown)
        with pytest.raises(ShuttingDown):
            batcher.submit(["meh"])

    asyncio.run(go())


def test_batcher_a_failing_call_fails_only_the_requests_in_it():
    """One call raising fails the requests with a text in it; the other requests get their answers."""
    from fastft.serve.batcher import Batcher, InferenceFailed

    pred = FakePredictor(fail_wider_than=6)  # "funny, warm and smart" (7 tokens) fails
    batcher = Batcher(pred, batching=False, max_batch_size=1)  # a call per text
    requests = [["a fine film"], ["funny, warm and smart"], ["meh", "ok"]]
    got = batcher.run_batch(requests)
    assert isinstance(got[1], InferenceFailed) and "simulated" in str(got[1])
    for k in (0, 2):
        np.testing.assert_allclose(got[k].probs, pred.expected(requests[k]), atol=1e-6)


def test_batcher_metrics_count_texts_tokens_requests_and_truncations_exactly():
    """Each call observes its own texts, real and padded tokens; a round counts the requests it ran
    (not one refused); the truncation counter counts truncated texts, not a request's texts; each
    request's queue time is observed once, never less than 0."""
    from fastft.serve.batcher import Batcher
    from fastft.serve.metrics import ServeMetrics
    from fastft.serve.protocol import BadRequest

    pred, metrics = FakePredictor(), ServeMetrics()
    batcher = Batcher(pred, batching=False, max_batch_size=2, max_wait_ms=1000, metrics=metrics)
    long = "word " * 40  # over max_length 32: truncated
    got = batcher.run_batch([["a fine film", long], ["\u200b"], ["meh"]])  # the second: no tokens, refused
    assert got[0].truncated == [False, True] and isinstance(got[1], BadRequest)
    text = metrics.exposition().decode()
    assert [(n, w) for n, w, _ in pred.calls] == [(2, 32), (1, 4)]  # lengths 32, 5 | 4
    assert metric(text, "fastft_batch_size_sum") == 3 and metric(text, "fastft_batch_size_count") == 2
    assert metric(text, "fastft_real_tokens_total") == 32 + 5 + 4
    assert metric(text, "fastft_padded_tokens_total") == 2 * 32 + 4
    assert metric(text, "fastft_batch_tokens_sum") == 2 * 32 + 4
    assert metric(text, "fastft_requests_per_batch_sum") == 2
    assert metric(text, "fastft_truncated_texts_total") == 1
    assert metric(text, "fastft_queue_duration_seconds_count") == 3  # each request once, its own wait (not < 0)
    assert metric(text, "fastft_queue_duration_seconds_sum") >= 0


def test_serve_metrics_count_errors_from_400_bucket_exactly_and_keep_efficiency_since_start():
    """ServeMetrics: a 400 is an error and a 399 is not; durations go in seconds into their buckets; one
    text lands in the le=1 batch-size bucket; padding efficiency is all real / all padded tokens."""
    from fastft.serve.metrics import ServeMetrics

    m = ServeMetrics()
    for code, seconds in ((200, 0.004), (400, 0.004), (399, None)):
        m.observe_request("/predict", code, seconds)
    m.observe_call(1, 5, 8, 0.002)
    m.observe_call(2, 10, 10, 0.002)
    text = m.exposition().decode()
    assert metric(text, "fastft_requests_total", route="/predict", code="399") == 1
    assert metric(text, "fastft_errors_total", route="/predict", code="400") == 1
    assert metric(text, "fastft_errors_total", route="/predict", code="399") == 0
    assert metric(text, "fastft_request_duration_seconds_count", route="/predict") == 2
    assert metric(text, "fastft_request_duration_seconds_sum", route="/predict") == pytest.approx(0.008)
    assert metric(text, "fastft_request_duration_seconds_bucket", route="/predict", le="0.003") == 0
    assert metric(text, "fastft_request_duration_seconds_bucket", route="/predict", le="0.005") == 2
    assert metric(text, "fastft_batch_size_bucket", le="1.0") == 1
    assert metric(text, "fastft_batch_size_bucket", le="2.0") == 2
    assert metric(text, "fastft_batch_tokens_bucket", le="16.0") == 2
    assert metric(text, "fastft_padding_efficiency") == pytest.approx(15 / 18)


def test_ray_build_converts_each_string_argument_to_its_fields_type(monkeypatch):
    """``serve run fastft.serve.ray_app:build k=v``: each value is read as its ServeConfig field's type
    (on/off, yes/no, 1/0 for a flag; int; float; threads an int)."""
    from fastft.serve import ray_app

    monkeypatch.setattr(ray_app, "deployment", lambda model_dir, config, replicas: (model_dir, config, replicas))
    args = {"model_dir": "m", "replicas": "2", "batching": "off", "calibrate": "on", "json_logs": "yes"}
    args.update(max_wait_ms="2.5", max_batch_size="8", threads="3")
    model_dir, config, replicas = ray_app.build(args)
    assert (model_dir, replicas, config.batching, config.calibrate, config.json_logs) == ("m", 2, False, True, True)
    assert (config.max_wait_ms, config.max_batch_size, config.threads) == (2.5, 8, 3)


def test_ray_engine_batches_by_its_config_and_waits_in_seconds(monkeypatch):
    """A Ray replica's @serve.batch takes max_batch_size requests (1 without batching) and waits
    max_wait_ms / 1000 seconds; a request's texts come back answered by the replica's batcher."""
    import sys
    import types

    from fastft.serve.config import ServeConfig
    from fastft.serve.metrics import ServeMetrics
    from fastft.serve.ray_app import RayEngine

    seen = []

    def batch(**kwargs):
        seen.append(kwargs)
        return lambda f: f

    serve = types.SimpleNamespace(batch=batch)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(serve=serve))
    monkeypatch.setitem(sys.modules, "ray.serve", serve)
    pred = FakePredictor()
    pred.path = "tiny"
    for batching, most in ((True, 8), (False, 1)):
        config = ServeConfig(max_batch_size=8, max_wait_ms=5, batching=batching, calibrate=False)
        engine = RayEngine(pred, config, ServeMetrics())
        assert seen.pop() == {"max_batch_size": most, "batch_wait_timeout_s": 0.005}
        got = asyncio.run(engine._batched([["a fine film", "meh"]]))
        np.testing.assert_allclose(got[0].probs, pred.expected(["a fine film", "meh"]), atol=1e-6)


def test_exactly_max_connections_are_served_one_more_is_503(serve_dir):
    """With max_connections=16, sixteen open connections are all served; the seventeenth gets a 503."""
    asgi = make_app(serve_dir, max_connections=16)
    with guarded(asgi) as server:
        server.wait_ready()
        conns = []
        try:
            for _ in range(17):
                conns.append(socket.create_connection(("127.0.0.1", server.port)))
                conns[-1].settimeout(10)
            for c in conns:
                c.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            answers = [c.recv(4096) for c in conns]
        finally:
            for c in conns:
                c.close()
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200"] * 16 + [b"HTTP/1.1 503"]
