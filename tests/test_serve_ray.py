"""``fastft serve --ray``: 2 replicas on a local Ray instance, the same routes through Ray's proxy (slow)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_serve import NAME, TEXTS, free_port, metric, reference, serve_dir  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def test_ray_two_replicas_answer_and_expose_metrics(serve_dir, reference):  # noqa: F811 - fixtures
    pytest.importorskip("ray.serve")
    import httpx
    import tritonclient.http as tc

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastft",
            "serve",
            str(serve_dir),
            "--ray",
            "--replicas",
            "2",
            "--port",
            str(port),
            "--name",
            NAME,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stderr.read()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the Ray deployment never turned ready"
            time.sleep(0.5)
        r = httpx.post(url + "/predict", json={"inputs": TEXTS}, timeout=30)
        assert r.status_code == 200, r.text
        assert [p["score"] for p in r.json()["predictions"]] == pytest.approx(
            reference(TEXTS).max(1).tolist(), abs=1e-5
        )
        client = tc.InferenceServerClient(url=f"127.0.0.1:{port}")
        inp = tc.InferInput("text", [len(TEXTS)], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_))
        np.testing.assert_allclose(client.infer(NAME, [inp]).as_numpy("probabilities"), reference(TEXTS), atol=1e-5)
        assert httpx.post(url + "/predict", json={"inputs": []}).status_code == 422
        assert httpx.get(url + "/v2/models/nope").status_code == 404
        replicas = {httpx.get(url + "/", timeout=30).json()["replica"] for _ in range(40)}
        assert len(replicas) == 2, replicas
        text = httpx.get(url + "/metrics", timeout=30).text
        assert metric(text, "fastft_ready") == 1 and "fastft_batch_size_bucket" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
