"""`zoo serve`: a trained zoo model behind an HTTP API (LitServe, dynamic batching) with a demo page.

    zoo serve --model runs/vit_mnist                  # newest last.ckpt of the run folder; http://127.0.0.1:8000/
    zoo serve --model runs/vit_mnist --max-batch-size 16 --batch-timeout 0.005 --backend onnx

Endpoints: POST /predict (JSON, or multipart with an image file), GET /metadata, GET /health, GET /docs
(OpenAPI page), GET / (the demo page). What a request may hold depends on the model's declared kind
(`zoo.contract`) and the run's task: `zoo.serve.handlers` has one handler per use.

Requests are checked in the HTTP process (`zoo.serve.server.Guard`, an ASGI middleware) before they reach the
model worker, so a bad request gets a 4xx naming the problem and never poisons a dynamic batch; a failure inside
the model gets a 500 with an error id that the server log repeats with the traceback.
"""
from __future__ import annotations

from .limits import Limits, RequestError

__all__ = ["Limits", "RequestError"]
