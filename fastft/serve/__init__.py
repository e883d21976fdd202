"""HTTP serving: dynamic batching, the Open Inference Protocol v2, Prometheus metrics, Ray Serve.

    from fastft.serve import ServeConfig, app, run
    asgi = app("runs/compressed", max_batch_tokens=8192)   # an ASGI app (Starlette)
    run("runs/compressed", ServeConfig(port=8080))          # uvicorn until SIGTERM, then drain

Imports only the runtime, data, models and error layers (never train/compress/export/bench).
"""

from fastft.serve.config import ServeConfig


def app(model_dir, config: ServeConfig | None = None, **options):
    """The ASGI app serving ``model_dir``; see :func:`fastft.serve.routes.app`."""
    from fastft.serve.routes import app as _app

    return _app(model_dir, config, **options)


def run(model_dir, config: ServeConfig | None = None) -> int:
    """Serve ``model_dir`` on uvicorn until SIGTERM/SIGINT; see :func:`fastft.serve.server.run`."""
    from fastft.serve.server import run as _run

    return _run(model_dir, config)


__all__ = ["ServeConfig", "app", "run"]
