"""`zoo serve` over real HTTP: one server per kind of model (tiny random checkpoints written here), started
together in child processes on free local ports; answers must equal the model's own predictions, bad
requests get the right 4xx, a failure inside the model a 500 with an id, and the servers keep answering."""
from __future__ import annotations

import base64
import contextlib
import functools
import io
import json

import pytest
import torch

pytest.importorskip("litserve")
requests = pytest.importorskip("requests")

import zoo
from zoo.runs import load_run, save_run
from zoo.serve.launch import ServerProcess, stop_all

NUMBERS = [f"{a} {b}" for a in ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
           for b in ("hundred", "thousand", "and", "twelve", "twenty", "thirty", "forty")]


def _tok(kind: str, max_length: int = 64, **kw):
    from zoo.data.tokenizers import train_tokenizer

    return train_tokenizer(kind, NUMBERS + ["un deux trois quatre cinq six sept huit neuf dix cent mille"], 120,
                           model_max_length=max_length, min_frequency=1, **kw)


def make_image_run(path) -> str:
    torch.manual_seed(0)
    model = zoo.create_model("vit_mnist", depth=2, dim=32, num_heads=2)
    save_run(model, path, meta={"labels": [f"digit {i}" for i in range(10)], "task": "zoo.tasks.image.ImageClassification",
                                "image": {"size": 28, "in_chans": 1, "mean": 0.1307, "std": 0.3081}})
    return str(path)


@functools.cache
def digit_png(index: int = 0) -> bytes:
    """A real MNIST-5k test digit as PNG bytes."""
    from PIL import Image

    images, _ = _mnist()
    buf = io.BytesIO()
    Image.fromarray(images[-1 - index]).save(buf, "PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def _mnist():
    from zoo.data.images import load_mnist5k

    return load_mnist5k()


def make_runs(tmp) -> dict[str, str]:
    from zoo.data.multimodal import build_tokenizer

    torch.manual_seed(0)
    runs = {"image": make_image_run(tmp / "vit.safetensors")}
    tok = _tok("wordpiece")
    bert = zoo.create_model("bert_tiny", head="cls", num_classes=3, vocab_size=len(tok), dim=32, depth=1, num_heads=2,
                            max_positions=24)
    runs["text"] = str(save_run(bert, tmp / "bert.safetensors", tokenizer=tok,
                                meta={"task": "zoo.tasks.text.SequenceClassification", "labels": ["less", "same", "more"]}))
    tok = _tok("bpe")
    s2s = zoo.create_model("transformer_tiny", vocab_size=len(tok), d_model=32, num_encoder_layers=1, num_decoder_layers=1,
                           num_heads=2, dim_feedforward=64, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           bos_token_id=tok.bos_token_id, decoder_start_token_id=tok.bos_token_id)
    runs["seq2seq"] = str(save_run(s2s, tmp / "s2s.safetensors", tokenizer=tok, meta={"task": "zoo.tasks.text.Seq2Seq"}))
    gpt = zoo.create_model("gpt2_tiny", vocab_size=len(tok), dim=32, depth=1, num_heads=2, max_positions=64)
    runs["lm"] = str(save_run(gpt, tmp / "gpt.safetensors", tokenizer=tok, meta={"task": "zoo.tasks.text.CausalLM"}))
    mtok = build_tokenizer(vocab_size=200)
    clip = zoo.create_model("clip_mnist", vocab_size=len(mtok), eos_token_id=mtok.eos_token_id, vision_layers=1, text_layers=1,
                            embed_dim=32, vision_width=32, text_width=32)
    runs["clip"] = str(save_run(clip, tmp / "clip.safetensors", tokenizer=mtok,
                                meta={"image": {"size": 28, "in_chans": 1, "mean": 0.1307, "std": 0.3081}}))
    cap = zoo.create_model("vit_captioner_mnist", vocab_size=len(mtok), encoder_depth=1, depth=1, encoder_dim=32, dim=32,
                           eos_token_id=mtok.eos_token_id, decoder_start_token_id=mtok.convert_tokens_to_ids("<en>"))
    runs["caption"] = str(save_run(cap, tmp / "cap.safetensors", tokenizer=mtok,
                                   meta={"image": {"size": 28, "in_chans": 1, "mean": 0.1307, "std": 0.3081}}))
    return runs


# Only the image server batches (LitServe's batching loop polls its queue; six idle pollers would slow the others).
SERVERS = {  # name -> (run, extra arguments)
    "image": ("image", ["--max-batch-size", "4", "--max-image-pixels", "10000", "--max-items", "3",
                        "--max-request-bytes", "200000"]),
    "onnx": ("image", ["--backend", "onnx", "--max-batch-size", "1"]),
    # 40 tokens is above the model's 24 positions: longer texts pass the guard and fail inside the model
    "text": ("text", ["--max-batch-size", "1", "--max-text-tokens", "40"]),
    "seq2seq": ("seq2seq", ["--max-batch-size", "1", "--max-new-tokens", "8"]),
    "lm": ("lm", ["--max-batch-size", "1"]),
    "clip": ("clip", ["--max-batch-size", "1"]),
    "caption": ("caption", ["--max-batch-size", "1"]),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    runs = make_runs(tmp)
    started = {name: ServerProcess(runs[run], "--threads", "1", *args, log=tmp / f"{name}.log", env={"OMP_NUM_THREADS": "1"})
               for name, (run, args) in SERVERS.items()}
    try:
        for s in started.values():
            s.wait(240)
        yield {name: (s, load_run(runs[SERVERS[name][0]])) for name, s in started.items()}
    finally:
        stop_all(started.values())


def post(server, body=None, **kw):
    return requests.post(server.url + "/predict", json=body, timeout=60, **kw) if body is not None or not kw else \
        requests.post(server.url + "/predict", timeout=60, **kw)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _image_probs(run, png: bytes) -> torch.Tensor:
    from PIL import Image

    from zoo.data.images import read_images

    path = io.BytesIO(png)
    img = Image.open(path)
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".png") as fh:
        img.save(fh.name)
        x = read_images([fh.name], **run.image)
    with torch.no_grad():
        return run.model(x).softmax(-1)[0]


def test_image_classification_equals_model(servers):
    server, run = servers["image"]
    meta = server.metadata()
    assert meta["kind"] == "image_classifier" and meta["classes"][3] == "digit 3" and meta["image"]["size"] == 28
    for i in range(3):
        png = digit_png(i)
        probs = _image_probs(run, png)
        r = post(server, {"image": b64(png), "top_k": 3, "attention": True})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["class_id"] == int(probs.argmax()) and out["label"] == f"digit {int(probs.argmax())}"
        assert abs(out["probability"] - float(probs.max())) < 1e-4
        assert [t["class_id"] for t in out["top"]] == probs.topk(3).indices.tolist()
        att = out["attention"]
        assert att["grid"] == [7, 7] and len(att["map"]) == 49 and max(att["map"]) == 1.0
    # multipart upload and data: URLs give the same answer; several inputs in one request
    png = digit_png(0)
    up = post(server, files={"image": ("d.png", png, "image/png")}, data={"top_k": "2"}).json()
    url = post(server, {"image": "data:image/png;base64," + b64(png)}).json()
    both = post(server, {"inputs": [{"image": b64(png)}, {"image": b64(digit_png(1))}]}).json()["outputs"]
    assert up["class_id"] == url["class_id"] == both[0]["class_id"] and len(up["top"]) == 2
    assert both[1]["class_id"] == int(_image_probs(run, digit_png(1)).argmax())
    # several files in one multipart field: one answer per file, in order, as {"inputs": [...]} gives them
    files = [("image", (f"{i}.png", digit_png(i), "image/png")) for i in (1, 0)]
    r = post(server, files=files, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    assert [o["class_id"] for o in r.json()["outputs"]] == [both[1]["class_id"], up["class_id"]]
    assert all(len(o["top"]) == 2 for o in r.json()["outputs"])


def test_onnx_backend_same_answers(servers):
    server, run = servers["onnx"]
    assert server.metadata()["backend"] == "onnx"
    for i in range(2):
        png = digit_png(i)
        probs = _image_probs(run, png)
        out = post(server, {"image": b64(png)}).json()
        assert out["class_id"] == int(probs.argmax()) and abs(out["probability"] - float(probs.max())) < 1e-4


def test_text_classification_and_pairs(servers):
    from zoo.data.tokenizers import encode_batch

    server, run = servers["text"]
    assert server.metadata()["classes"] == ["less", "same", "more"]
    for text, pair in (("three hundred", None), ("twelve", "forty and ten")):
        enc = encode_batch(run.tokenizer, [text], text_pairs=[pair] if pair else None)
        with torch.no_grad():
            probs = run.model(**enc).softmax(-1)[0]
        body = {"text": text, **({"text_pair": pair} if pair else {})}
        out = post(server, body).json()
        assert out["class_id"] == int(probs.argmax()) and abs(out["probability"] - float(probs.max())) < 1e-4


def test_translation_with_cross_attention(servers):
    from zoo.data.tokenizers import encode_batch

    server, run = servers["seq2seq"]
    for text in ("three hundred and twelve", "nine"):
        enc = encode_batch(run.tokenizer, [text])
        ids = run.model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=6)
        want = " ".join(run.tokenizer.decode(ids[0, 1:].tolist(), skip_special_tokens=True).split())
        out = post(server, {"text": text, "max_new_tokens": 6, "attention": True}).json()
        assert out["text"] == want
        att = out["attention"]
        assert len(att["weights"][0]) == len(att["source_tokens"]) == enc["input_ids"].shape[1]
        assert all(abs(sum(row) - 1) < 1e-3 for row in att["weights"])  # softmax rows over the source


def test_causal_lm_continuation(servers):
    server, run = servers["lm"]
    tok = run.tokenizer
    ids = torch.tensor([[tok.bos_token_id] + tok("three hundred", add_special_tokens=False)["input_ids"]])
    gen = run.model.generate(ids, max_new_tokens=5)
    out = post(server, {"prompt": "three hundred", "max_new_tokens": 5}).json()
    assert out["continuation"] == " ".join(tok.decode(gen[0, ids.shape[1]:].tolist(), skip_special_tokens=True).split())
    a = post(server, {"prompt": "two", "do_sample": True, "seed": 3, "temperature": 2.0}).json()
    assert a == post(server, {"prompt": "two", "do_sample": True, "seed": 3, "temperature": 2.0}).json()


def test_clip_zero_shot(servers):
    from zoo.data.tokenizers import encode_batch

    server, run = servers["clip"]
    labels = ["the digit seven", "the digit one", "number two"]
    png = digit_png(0)
    from PIL import Image

    from zoo.serve.handlers import image_tensor

    x = image_tensor(Image.open(io.BytesIO(png)), size=28, in_chans=1, mean=0.1307, std=0.3081)[None]
    enc = encode_batch(run.tokenizer, labels)
    with torch.no_grad():
        probs = run.model.zero_shot_logits(x, run.model.encode_text(enc["input_ids"], enc["attention_mask"])).softmax(-1)[0]
    out = post(server, {"image": b64(png), "labels": labels, "attention": True}).json()
    assert out["label"] == labels[int(probs.argmax())] and abs(out["probability"] - float(probs.max())) < 1e-4
    assert len(out["attention"]["map"]) == 49
    upload = {"image": ("d.png", png, "image/png")}
    for labels_field in ("\n".join(labels), json.dumps(labels), [("labels", t) for t in labels]):  # lines, JSON, repeated
        form = post(server, files=upload, data=labels_field if isinstance(labels_field, list) else {"labels": labels_field})
        assert form.status_code == 200 and form.json()["top"] == out["top"], (labels_field, form.text)
    for bad, words in (('["the digit one", "two"', "field 'labels' starts with '[' but is not valid JSON"),
                       ('["the digit one", 2]', "field 'labels' must be a list of strings; item 1 is a int (2)")):
        r = post(server, files=upload, data={"labels": bad})
        assert r.status_code == 422 and words in r.json()["error"], r.text
    for bad, words in ((["the digit one", " "], "label 1 is empty"), (["the digit one", 7], "item 1 is a int (7)")):
        r = post(server, {"image": b64(png), "labels": bad})
        assert r.status_code == 422 and words in r.json()["error"], r.text


def test_captioning(servers):
    server, run = servers["caption"]
    meta = server.metadata()
    assert {"en", "fr"} <= set(meta["languages"])
    from PIL import Image

    from zoo.serve.handlers import image_tensor

    png = digit_png(0)
    x = image_tensor(Image.open(io.BytesIO(png)), 28, 1, 0.1307, 0.3081)[None]
    fr = run.tokenizer.convert_tokens_to_ids("<fr>")
    gen = run.model.generate(x, max_new_tokens=5, decoder_start_token_id=fr)
    out = post(server, {"image": b64(png), "language": "fr", "max_new_tokens": 5}).json()
    assert out["text"] == " ".join(run.tokenizer.decode(gen[0, 1:].tolist(), skip_special_tokens=True).split())


BAD = [  # (what, request kwargs, status, words the error must contain)
    ("not JSON", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    ("empty body", {"data": b"", "headers": {"Content-Type": "application/json"}}, 400, "empty"),
    ("JSON but not an object", {"json": [1, 2]}, 400, "JSON object"),
    ("missing field", {"json": {"top_k": 2}}, 422, "missing field 'image'"),
    ("unknown field", {"json": {"image": "AAAA", "colour": "red"}}, 422, "unknown field"),
    ("wrong type", {"json": {"image": 5}}, 422, "must be a string, got int"),
    ("wrong int", {"json": {"image": "GOOD", "top_k": "2"}}, 422, "field 'top_k' must be an integer, got str"),
    ("lone surrogate", {"json": {"image": "\ud800AAAA"}}, 422, "is not valid Unicode text: '\\ud800' at character 0"),
    ("empty field", {"json": {"image": "  "}}, 422, "field 'image' is empty"),
    ("not base64", {"json": {"image": "###"}}, 400, "base64"),
    ("not an image", {"json": {"image": base64.b64encode(b"hello world, no image").decode()}}, 400, "not an image"),
    ("text file upload", {"files": {"image": ("a.txt", b"plain text", "text/plain")}}, 400, "not an image"),
    ("too many pixels", {"json": {"image": "BIG"}}, 413, "pixels"),
    ("body too large", {"data": b"{" + b" " * 300000 + b"}", "headers": {"Content-Type": "application/json"}}, 413,
     "limit of 200000 bytes"),
    ("batch too big", {"json": {"inputs": [{"image": "AAAA"}] * 4}}, 413, "batch too big"),
    ("top_k out of range", {"json": {"image": "GOOD", "top_k": 0}}, 422, "top_k"),
    ("unsupported content type", {"data": b"abc", "headers": {"Content-Type": "image/png"}}, 415, "content type"),
    ("JSON as text/plain", {"data": b'{"image": "AAAA"}', "headers": {"Content-Type": "text/plain"}}, 415,
     "unsupported content type 'text/plain'; send application/json"),
    ("JSON as a form (curl -d)", {"data": b'{"image": "AAAA"}', "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
     415, "`curl -d` sends that type: add -H 'Content-Type: application/json'"),
    ("urlencoded fields", {"data": {"image": "AAAA"}}, 415, "or multipart/form-data"),
    ("multipart field given twice", {"files": {"image": ("d.png", b"x", "image/png")}, "data": [("top_k", "1"), ("top_k", "2")]},
     422, "field 'top_k' is given 2 times"),
    ("more files than inputs allowed", {"files": [("image", ("d.png", b"x", "image/png"))] * 4}, 400,
     "Maximum number of files is 3"),
]


def _big_png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (200, 200)).save(buf, "PNG")
    return b64(buf.getvalue())


def test_bad_requests_get_4xx_and_server_keeps_serving(servers):
    server, _ = servers["image"]
    good = {"image": b64(digit_png(0))}
    images = {"BIG": _big_png(), "GOOD": good["image"]}
    for what, kw, status, words in BAD:
        if isinstance(kw.get("json"), dict) and kw["json"].get("image") in images:
            kw = {"json": {**kw["json"], "image": images[kw["json"]["image"]]}}
        r = requests.post(server.url + "/predict", timeout=30, **kw)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert words in r.json()["error"], (what, r.json())
    assert requests.get(server.url + "/predict", timeout=10).status_code == 405
    r = post(server, good)
    assert r.status_code == 200 and "class_id" in r.json()
    r = requests.post(server.url + "/predict", data=json.dumps(good).encode(), timeout=30)  # no content type: JSON
    assert "content-type" not in r.request.headers and r.status_code == 200, r.text
    assert requests.get(server.url + "/health", timeout=10).text == "ok"


def test_guard_checks_requests_off_the_event_loop():
    """Checking a request can take seconds (tokenizing megabytes of text, decoding a large image): the guard checks
    it in a thread, and the event loop goes on answering /health and the other requests meanwhile. The check here
    waits until the loop has run something else; run on the loop itself it would wait in vain."""
    import asyncio
    import threading

    from zoo.serve.limits import Limits
    from zoo.serve.server import Guard

    checking, loop_ran, seen = threading.Event(), threading.Event(), {}

    class SlowCheck:
        def check(self, payload):
            checking.set()
            seen["thread"], seen["loop_ran"] = threading.get_ident(), loop_ran.wait(5)
            return {"items": [payload], "single": True}

    async def model(scope, receive, send):
        seen["forwarded"] = json.loads((await receive())["body"])

    async def receive():
        return {"type": "http.request", "body": b'{"text": "seven"}', "more_body": False}

    async def main():
        scope = {"type": "http", "path": "/predict", "method": "POST", "headers": [(b"content-type", b"application/json")]}
        request = asyncio.create_task(Guard(model, SlowCheck(), Limits())(scope, receive, None))
        while not checking.is_set():
            await asyncio.sleep(0.01)
        loop_ran.set()  # the loop runs while the check is in progress
        await request
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert seen["loop_ran"] and seen["thread"] != loop_thread
    assert seen["forwarded"] == {"items": [{"text": "seven"}], "single": True}


def test_guard_checks_one_request_at_a_time():
    """The checks run in threads but one at a time: a fast tokenizer changes its padding state inside a call, and
    two threads doing so at once fail with "Already borrowed"."""
    import asyncio
    import threading
    import time

    from zoo.serve.limits import Limits
    from zoo.serve.server import Guard

    lock, state = threading.Lock(), {"active": 0, "most": 0}

    class SlowCheck:
        def check(self, payload):
            with lock:
                state["active"] += 1
                state["most"] = max(state["most"], state["active"])
            time.sleep(0.2)
            with lock:
                state["active"] -= 1
            return {"items": [payload], "single": True}

    async def model(scope, receive, send):
        await receive()

    async def receive():
        return {"type": "http.request", "body": b'{"text": "seven"}', "more_body": False}

    async def main():
        guard = Guard(model, SlowCheck(), Limits())
        scope = {"type": "http", "path": "/predict", "method": "POST", "headers": [(b"content-type", b"application/json")]}
        await asyncio.gather(*(guard(dict(scope), receive, None) for _ in range(3)))

    asyncio.run(main())
    assert state["most"] == 1


def test_text_limits_and_model_failure_500(servers):
    server, _ = servers["text"]
    r = post(server, {"text": "seven \udc00 hi"})  # JSON allows half a surrogate pair; no tokenizer takes it
    assert r.status_code == 422 and "field 'text' is not valid Unicode text" in r.json()["error"], r.text
    r = post(server, {"text": " "})
    assert r.status_code == 422 and "field 'text' is empty" in r.json()["error"]
    long = " ".join(["three hundred"] * 30)
    r = post(server, {"text": long})
    assert r.status_code == 413 and "too many tokens" in r.json()["error"]
    # 30 tokens pass the server's limit (40) but not the model's 24 positions: the model raises inside the worker
    text = " ".join(["three"] * 28)
    r = post(server, {"text": text})
    assert r.status_code == 500, r.text
    body = r.json()
    assert len(body["error_id"]) == 12 and "max_positions" in body["error"]
    assert body["error_id"] in server.log()  # the traceback is logged under the same id
    assert post(server, {"text": "twelve"}).status_code == 200  # still serving
    r = post(server, {"prompt": "x"})
    assert r.status_code == 422 and "unknown field" in r.json()["error"]


def test_generation_limits(servers):
    server, _ = servers["seq2seq"]
    r = post(server, {"text": "nine", "max_new_tokens": 100})
    assert r.status_code == 413 and "max_new_tokens" in r.json()["error"]
    server, _ = servers["lm"]
    r = post(server, {"prompt": "nine", "temperature": 0.5})
    assert r.status_code == 422 and "do_sample" in r.json()["error"]
    server, _ = servers["clip"]
    r = post(server, {"image": b64(digit_png(0)), "labels": []})
    assert r.status_code == 422 and "labels" in r.json()["error"]


@contextlib.contextmanager
def prefix_proxy(target: str, prefix: str = "/zoo/"):
    """A reverse proxy serving `target` under a path prefix, as nginx's `location /zoo/ { proxy_pass TARGET/; }`
    does; yields the prefixed URL. Paths outside the prefix get 404."""
    import http.server
    import threading

    class Forward(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if not self.path.startswith(prefix):
                return self.send_error(404, f"{self.path} is outside {prefix}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            r = requests.request(self.command, target + "/" + self.path[len(prefix):], data=body or None, timeout=60,
                                 headers={k: v for k, v in self.headers.items() if k.lower() == "content-type"})
            self.send_response(r.status_code)
            self.send_header("Content-Type", r.headers.get("content-type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{proxy.server_port}{prefix}"
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_demo_page_works_under_a_path_prefix(servers):
    """Behind a reverse proxy at /zoo/, every URL of the demo page (what it fetches, what it links) reaches the
    server: the page names them relative to itself, never from the host's root."""
    import re
    from urllib.parse import urljoin

    server, _ = servers["image"]
    with prefix_proxy(server.url) as base:
        page = requests.get(base, timeout=10).text
        fetched = re.findall(r"""fetch\(\s*["'`]([^"'`]*)""", page)
        linked = [u for u in re.findall(r'(?:href|src)="([^"]*)"', page) if not u.startswith("data:")]
        assert {u.rsplit("/", 1)[-1] for u in fetched} == {"predict", "metadata"} and linked, (fetched, linked)
        for url in fetched + linked:
            if url.endswith("predict"):
                r = requests.post(urljoin(base, url), json={"image": b64(digit_png(0))}, timeout=30)
            else:
                r = requests.get(urljoin(base, url), timeout=10)
            assert r.status_code == 200, (url, urljoin(base, url), r.status_code)


def test_pages_and_metadata(servers):
    server, _ = servers["image"]
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and "/metadata" in page.text and "<canvas" in page.text
    assert requests.get(server.url + "/docs", timeout=10).status_code == 200
    assert "/predict" in requests.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    meta = server.metadata()
    assert meta["limits"]["max_items"] == 3 and meta["use"] == "image-classification" and meta["attention"] is True
    for name, limit in (("text", 40), ("lm", 64)):  # set by --max-text-tokens, and left to the model (its 64 positions)
        meta = servers[name][0].metadata()
        assert meta["limits"]["max_text_tokens"] == meta["max_text_tokens"] == limit, meta


def test_refuses_what_it_cannot_serve(tmp_path):
    from zoo.serve.handlers import handler_for
    from zoo.serve.limits import Limits
    from zoo.serve.server import build_server

    with pytest.raises(ValueError, match="--backend onnx serves image and text classifiers"):
        build_server("gpt2_tiny", backend="onnx")
    with pytest.raises(ValueError, match="stores no tokenizer"):
        handler_for(load_run("transformer_tiny"), Limits())
    with pytest.raises(ValueError, match="positive integer"):
        Limits(max_items=0)


# -- the demo page in headless chromium ------------------------------------------------------------


def chromium_driver(width: int = 1100, height: int = 860):
    """Debian's chromium + chromedriver through Selenium (no driver download: the paths are given)."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.mark.slow
def test_demo_page_in_chromium(tmp_path):
    """The shipped vit_mnist.mnist5k, out of the box: upload a real MNIST-5k digit on the demo page; the page shows
    the model's class (the digit's true label) and draws the attention overlay. The page is opened through a reverse
    proxy that serves the server under /zoo/ (its requests must stay under that prefix).
    ZOO_SERVE_FIGURE=path saves the screenshot there (docs/figures/serve_demo.png was made so, see the README)."""
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = ServerProcess("vit_mnist.mnist5k", "--threads", "1", log=tmp_path / "serve.log",
                           env={"OMP_NUM_THREADS": "1"})
    try:
        server.wait(240)
        run = load_run("vit_mnist.mnist5k")
        png = digit_png(0)
        path = tmp_path / "digit.png"
        path.write_bytes(png)
        want = run.labels[int(_image_probs(run, png).argmax())]
        assert want == run.labels[int(_mnist()[1][-1])]  # the trained model reads this digit right
        driver = chromium_driver()
        try:
            with prefix_proxy(server.url) as base:  # behind a reverse proxy at /zoo/, as deployed servers often are
                driver.get(base)
                wait = WebDriverWait(driver, 30)
                wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
                assert not driver.find_element(By.ID, "image-section").get_attribute("hidden")
                assert driver.find_element(By.ID, "text-section").get_attribute("hidden")  # only what the model supports
                driver.find_element(By.ID, "file").send_keys(str(path))
                wait.until(lambda d: d.execute_script("return uploaded !== null"))
                driver.find_element(By.ID, "predict-image").click()
                wait.until(lambda d: d.find_element(By.ID, "image-result").text not in ("", "...")
                           or d.find_element(By.ID, "image-error").text)
                assert driver.find_element(By.ID, "image-error").text == ""
                assert driver.find_element(By.ID, "image-result").text.startswith(want + " ")
                painted = driver.execute_script(
                    "const d = document.getElementById('overlay').getContext('2d').getImageData(0, 0, 280, 280).data;"
                    "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;")
                assert painted > 280 * 280 // 2, painted  # the rollout covers the image
                driver.save_screenshot(str(tmp_path / "serve_demo.png"))
                if os.environ.get("ZOO_SERVE_FIGURE"):
                    driver.save_screenshot(os.environ["ZOO_SERVE_FIGURE"])
        finally:
            driver.quit()
    finally:
        server.stop()


def test_bench_percentiles():
    from zoo.bench.serve import percentile, summarise

    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5 and percentile([5.0], 99) == 5.0
    assert percentile(list(range(101)), 95) == 95
    row = summarise([0.010, 0.020, 0.030, 0.040], 2.0, 1)
    assert row["throughput_rps"] == 2.0 and row["p50_ms"] == 25.0 and row["errors"] == 1


def test_bench_summary_takes_medians_over_rounds():
    from zoo.bench.serve import summary_rows

    def row(rnd, mode, rps, p95):
        return {"model": "m", "round": rnd, "mode": mode, "max_batch_size": 16, "batch_timeout": 0.01, "concurrency": 32,
                "requests": 100, "errors": rnd, "throughput_rps": rps, "p50_ms": 1.0, "p95_ms": p95, "p99_ms": 2.0}

    rows = [row(0, "batched", 150.0, 40.0), row(1, "batched", 90.0, 80.0), row(2, "batched", 120.0, 10.0),
            row(0, "unbatched", 100.0, 5.0)]
    out = {r["mode"]: r for r in summary_rows(rows)}
    b = out["batched"]
    assert (b["throughput_rps"], b["p95_ms"], b["rounds"], b["requests"], b["errors"]) == (120.0, 40.0, 3, 300, 3)
    assert (b["throughput_rps_min"], b["throughput_rps_max"]) == (90.0, 150.0)
    assert out["unbatched"]["rounds"] == 1


def test_concurrent_requests_batch_and_bad_ones_stay_out(servers):
    """Requests sent together meet in dynamic batches (max 4); bad ones among them are refused alone."""
    from concurrent.futures import ThreadPoolExecutor

    server, run = servers["image"]
    pngs = [digit_png(i) for i in range(6)]
    want = [int(_image_probs(run, p).argmax()) for p in pngs]
    bodies = [{"image": b64(p)} for p in pngs] + [{"image": "###"}, {"img": 1}]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post(server, b), bodies))
    assert [a.json()["class_id"] for a in answers[:6]] == want
    assert [a.status_code for a in answers[6:]] == [400, 422]


def test_fill_mask_handler_and_refused_token_task():
    """Text encoders: the run's task picks the handler (fill-mask for MaskedLM); tasks without one are refused."""
    from zoo.runs import Run
    from zoo.serve.handlers import FillMask, RequestError, handler_for
    from zoo.serve.limits import Limits

    tok = _tok("wordpiece")
    model = zoo.create_model("bert_tiny", head="mlm", vocab_size=len(tok), dim=32, depth=1, num_heads=2).eval()
    run = Run(model, "bert_tiny", "test", {"task": "zoo.tasks.text.MaskedLM"}, tok)
    handler = handler_for(run, Limits())
    assert isinstance(handler, FillMask)
    items = handler.check({"text": f"three {tok.mask_token} twelve", "top_k": 2})["items"]
    out = handler.predict(items)[0]
    enc = tok([f"three {tok.mask_token} twelve"], return_tensors="pt")
    with torch.no_grad():
        logits = model(enc["input_ids"], enc["attention_mask"])[0]
    pos = int((enc["input_ids"][0] == tok.mask_token_id).nonzero())
    assert out["masks"][0][0]["token"] == tok.decode([int(logits[pos].argmax())]).strip() and len(out["masks"][0]) == 2
    with pytest.raises(RequestError, match="no mask token"):
        handler.check({"text": "three twelve"})
    with pytest.raises(ValueError, match="no handler for text encoders trained as TokenClassification"):
        handler_for(Run(model, "bert_tiny", "test", {"task": "zoo.tasks.text.TokenClassification"}, tok), Limits())


def test_attention_asked_of_a_model_without_maps_is_refused():
    """Swin's windowed attention gives no one map per image: metadata says so, and a request that asks for the
    map gets a 422 that says why instead of an answer without it."""
    from zoo.runs import Run
    from zoo.serve.handlers import RequestError, handler_for
    from zoo.serve.limits import Limits

    model = zoo.create_model("swin_mnist", embed_dim=16, depths=(1, 1), num_heads=(2, 2)).eval()
    handler = handler_for(Run(model, "swin_mnist", "test", {"task": "zoo.tasks.image.ImageClassification"}, None), Limits())
    handler.probe_attention()
    assert handler.describe()["attention"] is False
    png = b64(digit_png(0))
    assert handler.check({"image": png, "attention": False})["items"][0]["attention"] is False
    with pytest.raises(RequestError, match=r"field 'attention': this model gives no attention map.*image tower") as e:
        handler.check({"image": png, "attention": True})
    assert e.value.status == 422


def test_a_port_in_use_or_out_of_range_is_one_line_and_exit_status_1(capsys):
    import socket

    from zoo.cli import main

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for p, words in ((port, f"--port {port} on 127.0.0.1: cannot listen there"), (99999, "--port 99999 is no TCP port")):
            with pytest.raises(SystemExit) as e:
                main(["serve", "--model", "vit_digits", "--port", str(p)])
            assert e.value.code == 1 and words in capsys.readouterr().err


def test_openapi_page_works_under_a_path_prefix():
    """/docs names its OpenAPI file relative to itself: behind a proxy at /zoo/ the page fetches /zoo/openapi.json,
    not the host's /openapi.json (FastAPI's own page uses the absolute URL)."""
    import re
    from urllib.parse import urljoin

    from fastapi.testclient import TestClient

    from zoo.serve.server import build_server

    server, _ = build_server("vit_digits")
    client = TestClient(server.app)
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    (url,) = re.findall(r"""url:\s*['"]([^'"]+)['"]""", page.text)
    assert urljoin("https://host/zoo/docs", url) == "https://host/zoo/openapi.json", url
    assert "/predict" in client.get(urljoin("/docs", url)).json()["paths"]


def test_an_int8_folder_with_the_onnx_backend_is_refused_before_the_server_starts(tmp_path):
    """The workers export the model to ONNX when they start: with an int8 `zoo compress` folder they failed there,
    after `zoo serve` had announced the server, with a traceback per worker, and the command then stopped with exit
    status 0. The refusal comes first now, in one line that says what works."""
    from zoo.compress import quantize_int8, save_compressed
    from zoo.serve.server import build_server

    model = zoo.create_model("vit_digits").eval()
    save_compressed(quantize_int8(model, "torch.ao"), tmp_path / "int8", "vit_digits", {}, {}, "torch.ao")
    with pytest.raises(ValueError, match=r"--backend onnx: vit_digits holds torch.ao int8 layers .*--backend torch$"):
        build_server(str(tmp_path / "int8"), backend="onnx")
    _, meta = build_server(str(tmp_path / "int8"))  # the torch backend serves it
    assert meta["model"] == "vit_digits"


def test_causal_lm_handler_is_greedy_unless_the_request_samples(servers, monkeypatch):
    """A model that declares sampling (config.sampling, a converted Llama 3 Instruct) got generate() without do_sample
    for a request without "do_sample": it sampled, unseeded, where the request asked for greedy decoding."""
    import copy
    import dataclasses

    from zoo.serve.handlers import handler_for
    from zoo.serve.limits import Limits

    run = servers["lm"][1]
    model = copy.deepcopy(run.model)
    model.config = dataclasses.replace(model.config, sampling={"do_sample": True, "temperature": 5.0})
    handler = handler_for(dataclasses.replace(run, model=model), Limits())
    sampled = []
    monkeypatch.setattr(torch, "multinomial", lambda probs, n, **kw: sampled.append(probs) or probs.argmax(-1, keepdim=True))
    item = {"prompt": "three hundred", "max_new_tokens": 3, "do_sample": False, "temperature": None, "top_k": None,
            "top_p": None, "seed": None}
    handler.predict([item])
    assert not sampled
    handler.predict([{**item, "do_sample": True}])
    assert len(sampled) == 3


def test_causal_lm_prompt_holding_a_special_token_is_continued():
    """A prompt whose text names the pad token ("three <pad> twelve") got a 500: the handler passed no mask, so generate
    inferred one from the pad id, with a hole in the middle, and refused it as right padding. Prompts are batched
    without padding: their mask is all ones (as `zoo predict` gives them)."""
    from zoo.runs import Run
    from zoo.serve.handlers import handler_for
    from zoo.serve.limits import Limits

    tok = _tok("bpe")
    torch.manual_seed(0)
    model = zoo.create_model("gpt2_tiny", vocab_size=len(tok), dim=32, depth=1, num_heads=2, max_positions=64,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=None).eval()
    handler = handler_for(Run(model, "gpt2_tiny", "test", {"task": "zoo.tasks.text.CausalLM"}, tok), Limits())
    prompt = f"three {tok.pad_token} twelve"
    out = handler.predict(handler.check({"prompt": prompt, "max_new_tokens": 3})["items"])[0]
    ids = torch.tensor([handler.prompt_ids(prompt)])
    assert tok.pad_token_id in ids[0].tolist()
    gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3)
    assert out["continuation"] == " ".join(tok.decode(gen[0, ids.shape[1]:].tolist(), skip_special_tokens=True).split())
