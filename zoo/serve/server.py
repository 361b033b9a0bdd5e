"""`zoo serve`: LitServe with a request guard, a metadata endpoint and the demo page.

Processes: this one loads the run once to describe it (metadata) and to check requests; LitServe starts
the HTTP server (a thread here) and `--workers` model workers (spawned processes that load the run again
and predict on dynamic batches of up to `--max-batch-size` requests, waiting at most `--batch-timeout`
seconds for a batch to fill).

A POST /predict first meets `Guard` in the HTTP process: body size, content type, JSON / multipart parsing
and every field are checked there by the model's handler (`zoo.serve.handlers`), and the body handed on to
the worker is the canonical JSON of the checked inputs. A bad request therefore never enters a batch with
good ones; it gets {"error": "..."} with a 4xx. An exception inside the model gets a 500 with
{"error": ..., "error_id": ...}; the worker logs the same id with the traceback and keeps serving.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
import uuid
import warnings
from dataclasses import fields as dc_fields
from importlib import resources
from pathlib import Path

import litserve as ls

from .limits import Limits, RequestError

log = logging.getLogger("zoo.serve")
PREDICT = "/predict"
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds to


# -- the model worker ------------------------------------------------------------------------------


class ZooAPI(ls.LitAPI):
    """Loads the run in the worker (`setup`) and predicts on batches of checked requests."""

    def __init__(self, source: str, limits: Limits, backend: str = "torch", max_batch_size: int = 1,
                 batch_timeout: float = 0.0, threads: int | None = None):
        with warnings.catch_warnings():  # batch/unbatch are ours also when batching is off (max_batch_size 1)
            warnings.filterwarnings("ignore", message=".*both batch and unbatch methods")
            super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=PREDICT)
        self.source, self.limits, self.backend, self.threads = source, limits, backend, threads

    def setup(self, device):
        import torch

        from ..runs import load_run
        from .handlers import handler_for

        if self.threads:
            torch.set_num_threads(self.threads)
        self.handler = handler_for(load_run(self.source), self.limits)
        if self.backend == "onnx":
            self._onnx_dir = tempfile.TemporaryDirectory(prefix="zoo-serve-")
            self.handler.use_onnx(Path(self._onnx_dir.name) / "model.onnx")
        self.handler.probe_attention()

    def decode_request(self, request):
        return request  # already checked and made canonical by Guard in the HTTP process

    def batch(self, inputs):
        return list(inputs)

    def unbatch(self, output):
        return output

    def predict(self, jobs):
        from fastapi import HTTPException

        single = isinstance(jobs, dict)  # max_batch_size 1: LitServe passes one request
        jobs = [jobs] if single else jobs
        items = [it for job in jobs for it in job["items"]]
        try:
            outputs = self.handler.predict(items)
        except Exception as e:  # noqa: BLE001 - any model failure: a 500 with an id, the worker keeps serving
            error_id = uuid.uuid4().hex[:12]
            print(f"zoo serve: error {error_id} while predicting {len(items)} input(s) of {len(jobs)} request(s):\n"
                  f"{traceback.format_exc()}", file=sys.stderr, flush=True)
            raise HTTPException(500, {"error": f"the model failed on this request ({type(e).__name__}: "
                                               f"{str(e).splitlines()[0][:300] if str(e) else ''}); the server log "
                                               f"has the traceback under this error id", "error_id": error_id}) from None
        answers, start = [], 0
        for job in jobs:
            part = outputs[start:start + len(job["items"])]
            start += len(job["items"])
            answers.append(part[0] if job["single"] else {"outputs": part})
        return answers[0] if single else answers

    def encode_response(self, output):
        return output


# -- the HTTP process: the request guard -----------------------------------------------------------


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware for POST /predict: limits, parsing and checks before anything reaches a worker."""

    def __init__(self, app, handler, limits: Limits):
        self.app, self.handler, self.limits = app, handler, limits
        # one check at a time: a fast tokenizer changes its padding state inside a call, and two threads doing so
        # at once fail with the Rust binding's "Already borrowed"
        self._checking = threading.Lock()

    def _check(self, payload):
        with self._checking:
            return self.handler.check(payload)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != PREDICT or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        try:
            body = await self._read(scope, receive)
            payload = await self._parse(scope, body)
            # in a thread: tokenizing a text of megabytes or decoding a large image takes seconds, and the event loop
            # must keep answering /health and the other requests meanwhile
            canonical = await asyncio.to_thread(self._check, payload)
        except RequestError as e:
            return await _send_json(send, e.status, {"error": e.message})
        data = json.dumps(canonical).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        done = False

        async def replay():
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app({**scope, "headers": headers}, replay, send)

    async def _read(self, scope, receive) -> bytes:
        limit = self.limits.max_request_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = RequestError(413, f"the request body is over the limit of {limit} bytes; send a smaller image or "
                                    "fewer inputs (or start the server with a larger --max-request-bytes)")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _parse(self, scope, body: bytes):
        ctype = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        media = ctype.split(";")[0].strip().lower()
        if media == "multipart/form-data":
            return await self._form(scope, body)
        if media not in ("", "application/json"):  # no content type at all: the body is read as JSON
            curl = " (`curl -d` sends that type: add -H 'Content-Type: application/json')" \
                if media == "application/x-www-form-urlencoded" else ""
            raise RequestError(415, f"unsupported content type {media!r}{curl}; send application/json (a JSON object "
                                    f"such as {self.handler.example()}) or multipart/form-data (a form field per "
                                    "request field, an image as a file part)")
        if not body.strip():
            raise RequestError(400, f"the request body is empty; send a JSON object such as {self.handler.example()}")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the request body is not valid JSON ({e}); send a JSON object such as "
                                    f"{self.handler.example()}") from None

    async def _form(self, scope, body: bytes):
        from starlette.requests import Request

        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, replay).form(max_files=self.limits.max_items, max_fields=64)
        except Exception as e:  # noqa: BLE001 - malformed multipart: the parser's own message
            raise RequestError(400, f"the multipart body cannot be parsed ({type(e).__name__}: {e})") from None
        values: dict[str, list] = {}
        for name, value in form.multi_items():
            values.setdefault(name, []).append(await value.read() if hasattr(value, "read") else value)
        return self.handler.from_form(values)


# -- building the server -----------------------------------------------------------------------------


def describe(run, handler, backend: str, options: dict, source: str) -> dict:
    """What GET /metadata answers (and LitServe's /info repeats); `tag` is the shipped tag served, if one is."""
    from ..contract import kind_of

    return {"model": run.name, "source": str(run.source), "tag": str(source) if "pretrained_cfg" in run.meta else None, "kind": kind_of(run.model),
            "task": run.task_class, "backend": backend, "endpoint": PREDICT, **handler.describe(),
            "limits": _limits_in_force(handler), "server": options,
            "parameters": sum(p.numel() for p in run.model.parameters())}


def _limits_in_force(handler) -> dict:
    """The server's limits as they apply: a text limit left to the model reads as the model's own (not null)."""
    limits = handler.limits.as_dict()
    if getattr(handler, "max_tokens", None) is not None:
        limits["max_text_tokens"] = handler.max_tokens
    return limits


def build_server(source: str, limits: Limits | None = None, backend: str = "torch", max_batch_size: int = 1,
                 batch_timeout: float = 0.0, workers: int = 1, timeout: float = 30.0, threads: int | None = None):
    """(LitServer, metadata): the run is loaded here once to describe it and to check requests."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from ..runs import load_run
    from .handlers import handler_for

    limits = limits or Limits()
    if backend not in ("torch", "onnx"):
        raise ValueError(f"--backend must be torch or onnx, got {backend!r}")
    if max_batch_size < 1 or workers < 1:
        raise ValueError(f"--max-batch-size and --workers must be >= 1, got {max_batch_size} and {workers}")
    if max_batch_size > 1024:
        raise ValueError(f"--max-batch-size {max_batch_size} is more than 1024; dynamic batches that large only add latency")
    run = load_run(source)
    handler = handler_for(run, limits, backend)
    if backend == "onnx":
        handler.use_onnx(None)
    handler.probe_attention()
    options = {"max_batch_size": max_batch_size, "batch_timeout": batch_timeout, "workers": workers}
    meta = describe(run, handler, backend, options, source)
    api = ZooAPI(str(source), limits, backend, max_batch_size, batch_timeout, threads)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=workers, timeout=timeout, model_metadata=meta,
                          middlewares=[(Guard, {"handler": handler, "limits": limits})])
    app = server.app
    # LitServe's "litserve running" at /, and FastAPI's /docs, which fetches /openapi.json from the host's root
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in ("/", app.docs_url)]
    page = resources.files("zoo.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def openapi_page():
        # relative to the page, as the demo page's URLs are: behind a proxy's path prefix it reaches <prefix>/openapi.json
        return get_swagger_ui_html(openapi_url="openapi.json", title=f"{app.title} - Swagger UI")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def demo_page():
        return page

    @app.get("/metadata")
    def metadata() -> dict:
        """The served model: name, source, kind, use, classes, input size, request fields and limits."""
        return meta

    @app.exception_handler(StarletteHTTPException)
    async def as_json(request, exc):
        detail = exc.detail if isinstance(exc.detail, dict) else {"error": str(exc.detail)}
        return JSONResponse(detail, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    return server, meta


def _check_port(host: str, port: int) -> None:
    """The port is a TCP port this process may listen on now (uvicorn would print the banner, fail to bind in its
    thread and leave the command to exit 0)."""
    import socket

    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is no TCP port; pick one in 1..65535 (e.g. --port 8000)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed server's port is free
        try:
            sock.bind((host, port))
        except OSError as e:
            raise OSError(f"--port {port} on {host}: cannot listen there ({e.strerror or e}; another server may hold "
                          "it); pick another --port") from None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="zoo serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a `zoo fit` checkpoint or run folder, zoo safetensors, NAME@WEIGHTS, "
                                                  "or a registered name (random weights)")
    p.add_argument("--host", default="127.0.0.1", choices=HOSTS, help="127.0.0.1 (default): this machine only; "
                                                                     "0.0.0.0 or :: to accept other machines")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=8, help="dynamic batching: requests predicted together (1: off)")
    p.add_argument("--batch-timeout", type=float, default=0.005, help="seconds a batch waits to fill")
    p.add_argument("--workers", type=int, default=1, help="model worker processes")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: torch's choice)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="onnx: export with `zoo export` and run in onnxruntime (image and text classifiers)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for its answer (504 after)")
    for f in dc_fields(Limits):
        p.add_argument("--" + f.name.replace("_", "-"), type=int, default=f.default,
                       help=f"limit (default {f.default if f.default is not None else 'the model maximum'})")
    p.add_argument("--log-level", default="warning")
    a = p.parse_args(argv)
    _check_port(a.host, a.port)  # before the model loads: a port in use is one line and exit status 1
    limits = Limits(**{f.name: getattr(a, f.name) for f in dc_fields(Limits)})
    server, meta = build_server(a.model, limits, a.backend, a.max_batch_size, a.batch_timeout, a.workers, a.timeout,
                                a.threads)
    host = f"[{a.host}]" if ":" in a.host else a.host
    print(f"zoo serve: {meta['model']} ({meta['use']}, {a.backend}) from {meta['source']} on http://{host}:{a.port}/ "
          f"(demo page /, POST {PREDICT}, /metadata, /health, /docs); Ctrl+C stops", flush=True)
    # LitServe tries Process.terminate() on the HTTP thread at shutdown and logs an error; os._exit below ends it
    logging.getLogger("litserve.server").addFilter(lambda r: "has no attribute 'terminate'" not in r.getMessage())

    def _terminate(signum, frame):  # SIGTERM (docker stop, systemd, kill) stops as Ctrl+C does: workers first
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        server.run(host=a.host, port=a.port, num_api_servers=1, log_level=a.log_level, generate_client_file=False,
                   api_server_worker_type="thread")
    finally:
        # LitServe stops its workers but cannot stop the HTTP thread it started: end the process here
        print("zoo serve: stopped", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)
