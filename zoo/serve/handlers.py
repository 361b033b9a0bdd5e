"""One handler per use of a model: what a request holds, how it is checked, how a batch is predicted.

The use follows from the model's declared kind (`zoo.contract.KINDS`) and, for text encoders, the run's
task (or, for a bare registered model, the shape of its output); no handler looks at family names.

    use                   kind                          request fields (per input)
    image-classification  image_classifier              image, top_k, attention
    text-classification   text_encoder (class logits)   text, text_pair, top_k
    fill-mask             text_encoder (vocab logits)   text (with the tokenizer's mask token), top_k
    text-generation       encoder_decoder, recurrent    text, max_new_tokens, num_beams, attention
    captioning            image_to_text                 image, language, max_new_tokens, num_beams
    zero-shot             dual_encoder                  image, labels, top_k, attention
    causal-lm             decoder_only                  prompt, max_new_tokens, do_sample, temperature, top_k, top_p, seed

A request is one input (the fields at the top level) or several: {"inputs": [{...}, {...}]}.
`check` runs in the HTTP process and turns a request into canonical items or raises `RequestError`;
`predict` runs in the model worker on the items of many requests at once (dynamic batching).
"""
from __future__ import annotations

import base64
import binascii
import inspect
import io
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .limits import Limits, RequestError

MISSING = object()


@dataclass
class Field:
    type: str  # "str", "int", "float", "bool", "strs" (list of strings)
    help: str
    required: bool = False
    default: Any = None


IMAGE = Field("str", "the image: base64 PNG/JPEG (a data: URL is fine) in JSON, or a file part named 'image' in multipart",
              required=True)
TOP_K = Field("int", "how many classes to return, best first", default=5)
ATTENTION = Field("bool", "also return the attention map", default=False)
MAX_NEW = Field("int", "generation length in tokens")
BEAMS = Field("int", "beam search width (1: greedy)", default=1)


def _type_ok(kind: str, value) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _json_strings(name: str, text: str) -> list[str]:
    """A form value that starts with '[' -> the JSON list of strings it holds."""
    fix = "send a JSON list of strings such as [\"a\", \"b\"], one value per line, or the field once per value"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(422, f"field {name!r} starts with '[' but is not valid JSON ({e}); {fix}") from None
    if not isinstance(value, list):
        raise RequestError(422, f"field {name!r} starts with '[' but is not a JSON list; {fix}")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise RequestError(422, f"field {name!r} must be a list of strings; item {i} is a {type(v).__name__} ({v!r})")
    return value


def _from_form(kind: str, name: str, values: list[str]):
    """Multipart fields arrive as strings: convert them to the field's type. A list field takes a JSON list, one
    value per line, or the field repeated once per value."""
    if kind == "strs":
        out = []
        for text in values:
            if text.lstrip().startswith("["):
                out += _json_strings(name, text)
            else:
                out += [v for v in text.splitlines() if v.strip()] if len(values) == 1 else [text]
        return out
    if len(values) > 1:
        raise RequestError(422, f"field {name!r} is given {len(values)} times; give it once (only file parts, one "
                                "per input, may repeat)")
    text = values[0]
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise RequestError(422, f"field {name!r} must be {'an integer' if kind == 'int' else 'a number'}, got {text!r}") from None
    if kind == "bool":
        if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise RequestError(422, f"field {name!r} must be true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes", "on")
    return text


def _max_positions(model) -> int | None:
    """The longest text the model takes, as its inputs declare it (zoo.contract, `Inputs.max_sizes`); None: no limit."""
    from ..contract import example_inputs

    sizes = example_inputs(model, 1, 2).max_sizes
    return min(sizes.values()) if sizes else None


def normalise(text: str) -> str:
    return " ".join(text.split())


# -- images --------------------------------------------------------------------------------------


def image_bytes(value: str) -> bytes:
    """base64 (optionally a data: URL) -> bytes."""
    if value.startswith("data:"):
        head, _, value = value.partition(",")
        if ";base64" not in head:
            raise RequestError(400, "field 'image' is a data: URL without ;base64; send base64 PNG or JPEG data")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "field 'image' is not valid base64; send the image file's bytes base64-encoded "
                                "(or upload it as multipart form data, part 'image')") from None


def open_image(data: bytes, max_pixels: int):
    """A fully decoded PIL image, refused before decoding when its header says it is too large."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError):
        raise RequestError(400, f"field 'image' is not an image ({len(data)} bytes that Pillow cannot read); "
                                "send a PNG or JPEG") from None
    w, h = im.size
    if w * h > max_pixels:
        raise RequestError(413, f"the image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} pixels; "
                                "send a smaller image (or start the server with a larger --max-image-pixels)")
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data: Pillow raises several types
        raise RequestError(400, f"field 'image' could not be decoded ({type(e).__name__}: {e}); the file is damaged") from None
    return im


def image_tensor(im, size: int, in_chans: int, mean, std) -> torch.Tensor:
    """A PIL image -> (C, size, size), read exactly as `zoo.data.images.read_images` reads files."""
    import numpy as np
    from PIL import Image

    from ..transforms import to_mode

    im = to_mode(im, "L" if in_chans == 1 else "RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).div(255.0)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return (x - mean_t) / std_t


# -- attention maps --------------------------------------------------------------------------------


@torch.no_grad()
def rollout_maps(model, images: torch.Tensor) -> list[dict]:
    """Attention rollout of the model's image tower (zoo.viz), one (grid_h x grid_w) map in [0, 1] per image:
    from the class token when the tower pools by it, else averaged over the patches (as `zoo viz attention`)."""
    from ..viz import attention_rollout, find_vit, vit_attentions

    vit = find_vit(model)
    roll = attention_rollout(vit_attentions(model, images))
    prefix = vit.num_prefix
    grid = tuple(getattr(vit, "grid", None) or (images.shape[-2] // vit.config.patch_size,) * 2)
    by_token = prefix and getattr(vit.config, "pool", "token") == "token"
    rows = roll[:, 0, prefix:] if by_token else roll[:, prefix:, prefix:].mean(1)
    out = []
    for r in rows:
        r = r - r.min()
        r = r / r.max().clamp(min=1e-12)
        out.append({"grid": list(grid), "map": [round(float(v), 5) for v in r],
                    "query": "class token" if by_token else "mean over patches"})
    return out


# -- backends ----------------------------------------------------------------------------------------


class TorchForward:
    """The model on named tensors: its declared inputs (`example_inputs` names, forward's order) positionally,
    and any other tensor its forward takes by keyword (token_type_ids of sentence pairs)."""

    def __init__(self, model):
        from ..contract import example_inputs

        self.model = model
        self.names = example_inputs(model, batch=1, length=4).names
        self.accepts = set(inspect.signature(model.forward).parameters)

    @torch.no_grad()
    def __call__(self, **tensors) -> torch.Tensor:
        extra = {k: v for k, v in tensors.items() if k not in self.names and k in self.accepts}
        return self.model(*[tensors[n] for n in self.names if n in tensors], **extra)


class OnnxForward:
    """The model exported by `zoo export` (dynamic batch / length) and run in onnxruntime."""

    def __init__(self, model, path):
        import onnxruntime as ort

        from ..export import export_file

        export_file(model, path, "onnx")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, **tensors) -> torch.Tensor:
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise RuntimeError(f"the ONNX graph needs inputs {missing} that this request did not produce")
        return torch.from_numpy(self.session.run(None, {n: tensors[n].cpu().numpy() for n in self.names})[0])


# -- handlers ------------------------------------------------------------------------------------


class Handler:
    use = ""
    fields: ClassVar[dict[str, Field]] = {}
    onnx = False  # whether --backend onnx serves this use (one forward call, no generation loop)

    def __init__(self, run, limits: Limits):
        self.run, self.model, self.limits = run, run.model, limits
        self.tokenizer = run.tokenizer
        self.forward = TorchForward(self.model)
        self.attention = False  # set by `probe_attention`
        self.no_attention_reason = ""  # why not, when the probe failed
        limit = _max_positions(self.model) or 512
        if self.tokenizer is not None and getattr(self.tokenizer, "model_max_length", 0) < 10 ** 6:
            limit = min(limit, self.tokenizer.model_max_length)
        self.max_tokens = limits.max_text_tokens or min(limit, 512)

    # -- description (metadata endpoint) --
    def describe(self) -> dict:
        out = {"use": self.use, "fields": {k: {"type": f.type, "required": f.required, "help": f.help,
                                                **({"default": f.default} if f.default is not None else {})}
                                           for k, f in self.fields.items()},
               "attention": self.attention}
        if self.tokenizer is not None:
            out["max_text_tokens"] = self.max_tokens
        return out

    def probe_attention(self) -> None:
        """Try the attention map on a made-up input once; the page and the API offer it only when it works."""
        if "attention" not in self.fields:
            return
        try:
            self._probe()
            self.attention = True
        except Exception as e:  # noqa: BLE001 - a model whose attention cannot be captured: no maps, nothing else changes
            self.attention = False
            self.no_attention_reason = str(e).split("\n")[0][:300]

    def _probe(self) -> None:
        raise NotImplementedError

    @classmethod
    def check_backend(cls, backend: str) -> None:
        if backend == "onnx" and not cls.onnx:
            raise ValueError(f"--backend onnx serves image and text classifiers (one forward call); this model's use is "
                             f"{cls.use} (its generation loop runs in PyTorch): use --backend torch")

    def use_onnx(self, path) -> None:
        """Predict through onnxruntime (the file exported to `path`); path None only checks that the use allows it."""
        self.check_backend("onnx")
        if path is None:  # here, before the server starts: the workers export the model to ONNX when they start
            from ..export import ExportError, check_exportable

            try:
                check_exportable(self.model)
            except ExportError as e:
                raise ValueError(f"--backend onnx: {e}; or serve this model with --backend torch") from None
        if path is not None:
            self.forward = OnnxForward(self.model, path)

    # -- the HTTP process: request -> canonical items --
    def check(self, payload) -> dict:
        if not isinstance(payload, dict):
            raise RequestError(400, f"the request body must be a JSON object, got {type(payload).__name__}; "
                                    f"e.g. {self.example()}")
        if "inputs" in payload:
            extra = sorted(set(payload) - {"inputs"})
            if extra:
                raise RequestError(422, f"unknown field(s) {extra} next to 'inputs'; put every field inside each input")
            items = payload["inputs"]
            if not isinstance(items, list) or not items:
                raise RequestError(422, "field 'inputs' must be a non-empty list of objects")
            if len(items) > self.limits.max_items:
                raise RequestError(413, f"batch too big: {len(items)} inputs, the limit is {self.limits.max_items} per "
                                        "request; split the request (or raise --max-items)")
            return {"items": [self.check_item(it, i) for i, it in enumerate(items)], "single": False}
        return {"items": [self.check_item(payload, None)], "single": True}

    def sample(self) -> dict:
        """A request this handler accepts (benchmarks, the README)."""
        return {"text": "three hundred and twelve"}

    def example(self) -> str:
        return "{" + ", ".join(f'"{k}": ...' for k, f in self.fields.items() if f.required) + "}"

    def check_item(self, item, index) -> dict:
        where = "" if index is None else f" of input {index}"
        if not isinstance(item, dict):
            raise RequestError(422, f"input {index} must be a JSON object, got {type(item).__name__}")
        unknown = sorted(set(item) - set(self.fields))
        if unknown:
            raise RequestError(422, f"unknown field(s) {unknown}{where}; this {self.use} model takes {sorted(self.fields)}")
        out = {}
        for name, f in self.fields.items():
            value = item.get(name, MISSING)
            if value is MISSING or value is None:
                if f.required:
                    raise RequestError(422, f"missing field {name!r}{where}: {f.help}")
                out[name] = f.default
                continue
            if not _type_ok(f.type, value):
                kind = {"strs": "list of strings", "int": "an integer", "float": "a number", "bool": "true or false",
                        "str": "a string"}.get(f.type, f.type)
                if f.type == "strs" and isinstance(value, list):
                    i = next(i for i, v in enumerate(value) if not isinstance(v, str))
                    raise RequestError(422, f"field {name!r}{where} must be a list of strings; item {i} is a "
                                            f"{type(value[i]).__name__} ({value[i]!r})")
                raise RequestError(422, f"field {name!r}{where} must be {'a ' if f.type == 'strs' else ''}{kind}, "
                                        f"got {type(value).__name__}")
            for i, text in enumerate([value] if isinstance(value, str) else value if f.type == "strs" else []):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:  # a lone surrogate ("\ud800") that JSON allows and no tokenizer takes
                    item_at = f" item {i}" if f.type == "strs" else ""
                    raise RequestError(422, f"field {name!r}{item_at}{where} is not valid Unicode text: "
                                            f"{text[e.start]!r} at character {e.start} is half of a UTF-16 surrogate "
                                            "pair; send the whole character") from None
            if f.required and f.type == "str" and not value.strip():
                raise RequestError(422, f"field {name!r}{where} is empty: {f.help}")
            out[name] = value
        if out.get("attention") and not self.attention:
            raise RequestError(422, f"field 'attention'{where}: this model gives no attention map (GET /metadata answers "
                                    f"\"attention\": false{': ' + self.no_attention_reason if self.no_attention_reason else ''}); "
                                    "leave the field out or set it false")
        return self.check_values(out, where)

    def check_values(self, item: dict, where: str) -> dict:
        return item

    def from_form(self, form: dict[str, list]) -> dict:
        """Multipart fields -> a JSON-like payload (files become base64). Several files in one field are several
        inputs, in order, each with the other fields: {"inputs": [...]}, as JSON requests ask for several."""
        payload, files = {}, {}
        for name, values in form.items():
            f = self.fields.get(name)
            if f is None:
                raise RequestError(422, f"unknown field {name!r}; this {self.use} model takes {sorted(self.fields)}")
            if f.type != "strs" and len(values) > 1 and all(isinstance(v, bytes) for v in values):
                files[name] = [base64.b64encode(v).decode() for v in values]
                continue
            values = [base64.b64encode(v).decode() if isinstance(v, bytes) else v for v in values]
            payload[name] = _from_form(f.type, name, values)
        if not files:
            return payload
        if len(files) > 1:
            raise RequestError(422, f"fields {sorted(files)} each hold several files; only one field may repeat")
        [(name, values)] = files.items()
        return {"inputs": [{**payload, name: v} for v in values]}

    # shared checks
    def _range(self, item, name, low, high, where, flag=""):
        value = item.get(name)
        if value is not None and not low <= value <= high:
            raise RequestError(422 if value < low else 413,
                               f"field {name!r}{where} must be between {low} and {high}, got {value}"
                               + (f" (the server's limit; start it with a larger {flag})" if flag and value > high else ""))

    def _tokens(self, where, *texts) -> int:
        n = len(self.tokenizer(*texts, verbose=False)["input_ids"])  # verbose: no warning per over-long request
        if n > self.max_tokens:
            raise RequestError(413, f"too many tokens{where}: {n} tokens, the limit is {self.max_tokens}; shorten the text "
                                    "(or start the server with a larger --max-text-tokens)")
        return n

    def _image(self, item, where):
        open_image(image_bytes(item["image"]), self.limits.max_image_pixels)

    # -- the worker --
    def predict(self, items: list[dict]) -> list[dict]:
        raise NotImplementedError


class _ImageInput:
    """Image settings of the run (size, channels, normalisation) and the decoding of the 'image' field."""

    def image_settings(self) -> dict:
        image = self.run.image
        if not image:  # a registered name or a weights file: the images the model declares (zoo.contract), mean/std 0.5
            from ..contract import example_inputs

            images = next(t for t in example_inputs(self.model, 1).tensors.values() if t.dim() == 4)
            image = {"size": images.shape[-1], "in_chans": images.shape[1], "mean": 0.5, "std": 0.5}
        return image

    def images(self, items) -> torch.Tensor:
        s = self.image_settings()
        return torch.stack([image_tensor(open_image(image_bytes(it["image"]), self.limits.max_image_pixels),
                                         s["size"], s["in_chans"], s["mean"], s["std"]) for it in items])

    def sample(self) -> dict:
        """An MNIST-5k test digit as base64 PNG (the server resizes it to the model's input)."""
        from PIL import Image

        from ..data.images import load_mnist5k

        buf = io.BytesIO()
        Image.fromarray(load_mnist5k()[0][-1]).save(buf, "PNG")
        return {"image": base64.b64encode(buf.getvalue()).decode()}

    def _probe(self) -> None:
        s = self.image_settings()
        rollout_maps(self.model, torch.zeros(1, s["in_chans"], s["size"], s["size"]))


def _ranked(probs: torch.Tensor, k: int, names: list[str]) -> list[dict]:
    top = probs.topk(min(k, probs.shape[-1]))
    return [{"class_id": int(i), "label": names[int(i)], "probability": round(float(p), 6)}
            for p, i in zip(top.values, top.indices)]


class ImageClassification(_ImageInput, Handler):
    use = "image-classification"
    fields: ClassVar[dict[str, Field]] = {"image": IMAGE, "top_k": TOP_K, "attention": ATTENTION}
    onnx = True

    def labels(self) -> list[str]:
        n = int(getattr(self.model, "num_classes", 0) or self.model.config.num_classes)
        return list(self.run.labels or [str(i) for i in range(n)])

    def describe(self) -> dict:
        return {**super().describe(), "classes": self.labels(), "image": self.image_settings()}

    def check_values(self, item, where):
        self._range(item, "top_k", 1, self.limits.max_top_k, where, "--max-top-k")
        self._image(item, where)
        return item

    def predict(self, items):
        x = self.images(items)
        probs = self.forward(**{self.forward.names[0]: x}).float().softmax(-1)
        names = self.labels()
        out = []
        for it, p in zip(items, probs):
            top = _ranked(p, it["top_k"], names)
            out.append({**top[0], "top": top})
        wanted = [i for i, it in enumerate(items) if it["attention"]]
        if wanted and self.attention:
            for i, amap in zip(wanted, rollout_maps(self.model, x[wanted])):
                out[i]["attention"] = amap
        return out


class TextClassification(Handler):
    use = "text-classification"
    fields: ClassVar[dict[str, Field]] = {"text": Field("str", "the text to classify", required=True),
              "text_pair": Field("str", "second text of a sentence pair (optional)"), "top_k": TOP_K}
    onnx = True

    def labels(self) -> list[str]:
        n = int(getattr(self.model.config, "num_classes", 0))
        return list(self.run.labels or [str(i) for i in range(n)])

    def describe(self) -> dict:
        return {**super().describe(), "classes": self.labels()}

    def use_onnx(self, path) -> None:
        """The exported graph takes the model's declared inputs; without token_type_ids it cannot read sentence pairs."""
        from ..contract import example_inputs

        super().use_onnx(path)
        if "token_type_ids" not in example_inputs(self.model, batch=1, length=4).names:
            self.fields = {k: v for k, v in self.fields.items() if k != "text_pair"}

    def check_values(self, item, where):
        self._range(item, "top_k", 1, self.limits.max_top_k, where, "--max-top-k")
        pair = item.get("text_pair")
        self._tokens(where, item["text"], *([pair] if pair is not None else []))
        return item

    def encode(self, items):
        from ..data.tokenizers import encode_batch

        pairs = [it.get("text_pair") for it in items]
        return encode_batch(self.tokenizer, [it["text"] for it in items],
                            text_pairs=None if all(p is None for p in pairs) else [p or "" for p in pairs], truncation=False)

    def predict(self, items):
        logits = self.forward(**self.encode(items)).float()
        probs = logits.softmax(-1)
        names = self.labels()
        return [{**top[0], "top": top} for top in (_ranked(p, it["top_k"], names) for it, p in zip(items, probs))]


class FillMask(TextClassification):
    use = "fill-mask"
    fields: ClassVar[dict[str, Field]] = {"text": Field("str", "text with one or more mask tokens", required=True), "top_k": TOP_K}
    onnx = True

    def describe(self) -> dict:
        return {**Handler.describe(self), "mask_token": self.tokenizer.mask_token}

    def sample(self) -> dict:
        return {"text": f"three {self.tokenizer.mask_token} and twelve"}

    def check_values(self, item, where):
        item = {**item, "text_pair": None}
        super().check_values(item, where)
        if self.tokenizer.mask_token not in item["text"]:
            raise RequestError(422, f"field 'text'{where} holds no mask token {self.tokenizer.mask_token!r}; "
                                    "put it where a word should be predicted")
        return item

    def predict(self, items):
        enc = self.encode(items)
        logits = self.forward(**enc).float()
        out = []
        for it, ids, keep, lg in zip(items, enc["input_ids"], enc["attention_mask"], logits):
            where = (ids == self.tokenizer.mask_token_id).nonzero().flatten()
            filled = ids.clone()
            filled[where] = lg[where].argmax(-1)
            masks = [[{"token": self.tokenizer.decode([int(i)]).strip(), "probability": round(float(p), 6)}
                      for p, i in zip(*lg[pos].softmax(-1).topk(it["top_k"]))] for pos in where]
            text = self.tokenizer.decode(filled[keep.bool()].tolist(), skip_special_tokens=True)
            out.append({"text": normalise(text), "masks": masks})
        return out


class _Generation(Handler):
    def check_values(self, item, where):
        self._range(item, "max_new_tokens", 1, self.limits.max_new_tokens, where, "--max-new-tokens")
        self._range(item, "num_beams", 1, self.limits.max_beams, where, "--max-beams")
        return item

    def settings(self, item) -> dict:
        return {"max_new_tokens": item.get("max_new_tokens") or min(32, self.limits.max_new_tokens),
                "num_beams": item.get("num_beams") or 1}

    def groups(self, items) -> dict[tuple, list[int]]:
        """Items that share generation settings run as one batch."""
        out: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            out.setdefault(tuple(sorted(self.settings(it).items())), []).append(i)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [normalise(t) for t in self.tokenizer.batch_decode(ids[:, 1:].tolist(), skip_special_tokens=True)]


class TextGeneration(_Generation):
    """Translation / text-to-text with an encoder-decoder; the cross-attention map on request."""

    use = "text-generation"
    fields: ClassVar[dict[str, Field]] = {"text": Field("str", "the source text", required=True), "max_new_tokens": MAX_NEW, "num_beams": BEAMS,
              "attention": ATTENTION}

    def check_values(self, item, where):
        item = super().check_values(item, where)
        self._tokens(where, item["text"])
        return item

    def _probe(self) -> None:
        self.cross_map("one two", self.model.generate(self._source(["one two"])[0], max_new_tokens=2)[0].tolist())

    def _source(self, texts):
        from ..data.tokenizers import encode_batch

        enc = encode_batch(self.tokenizer, texts, truncation=False)
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def predict(self, items):
        out: list[dict] = [{} for _ in items]
        for key, idx in self.groups(items).items():
            ids, mask = self._source([items[i]["text"] for i in idx])
            gen = self.model.generate(ids, attention_mask=mask, **dict(key))
            for i, row, text in zip(idx, gen, self.decode(gen)):
                out[i] = {"text": text}
                if items[i]["attention"] and self.attention:
                    out[i]["attention"] = self.cross_map(items[i]["text"], row.tolist())
        return out

    def cross_map(self, text: str, target: list[int]) -> dict:
        """Last decoder layer's cross-attention, mean over heads: (target tokens x source tokens), as `zoo viz`."""
        from ..viz import cross_attentions

        tok, eos = self.tokenizer, self.model.config.eos_token_id
        pad = getattr(self.model.config, "pad_token_id", None)
        target = [t for t in target if t != pad] if pad not in (None, target[0]) else target
        if eos in target[1:]:
            target = target[: target.index(eos, 1) + 1]
        ids, mask = self._source([text])
        att = cross_attentions(self.model, ids, torch.tensor([target[:-1] or target]), mask)[-1][0].mean(0)
        name = lambda i: tok.decode([i]).strip() or tok.convert_ids_to_tokens(i)
        return {"source_tokens": [name(i) for i in ids[0].tolist()], "target_tokens": [name(i) for i in target[1:]] or [""],
                "weights": [[round(float(v), 5) for v in row] for row in att]}


class Captioning(_ImageInput, _Generation):
    use = "captioning"
    fields: ClassVar[dict[str, Field]] = {"image": IMAGE, "language": Field("str", "language token that starts the caption (see metadata)"),
              "max_new_tokens": MAX_NEW, "num_beams": BEAMS}

    def languages(self) -> dict[str, int]:
        """Language tokens such as <en> among the tokenizer's special tokens -> their ids."""
        from ..data.tokenizers import _extra_special_tokens

        tok = self.tokenizer
        specials = [t for t in _extra_special_tokens(tok) if t.startswith("<") and t.endswith(">")]
        return {t[1:-1]: tok.convert_tokens_to_ids(t) for t in specials}

    def describe(self) -> dict:
        return {**super().describe(), "languages": sorted(self.languages()), "image": self.image_settings()}

    def check_values(self, item, where):
        item = super().check_values(item, where)
        langs = self.languages()
        if item["language"] is not None and item["language"] not in langs:
            raise RequestError(422, f"unknown language {item['language']!r}{where}; this model knows {sorted(langs)}")
        self._image(item, where)
        return item

    def settings(self, item) -> dict:
        lang = item.get("language")
        return {**super().settings(item), **({"decoder_start_token_id": self.languages()[lang]} if lang else {})}

    @torch.no_grad()
    def predict(self, items):
        x = self.images(items)
        out: list[dict] = [{} for _ in items]
        for key, idx in self.groups(items).items():
            gen = self.model.generate(x[idx], **dict(key))
            for i, text in zip(idx, self.decode(gen)):
                out[i] = {"text": text}
        return out


class ZeroShot(_ImageInput, Handler):
    use = "zero-shot"
    fields: ClassVar[dict[str, Field]] = {"image": IMAGE, "labels": Field("strs", "candidate texts, e.g. ['a photo of the digit three', ...]",
                                              required=True), "top_k": TOP_K, "attention": ATTENTION}

    def describe(self) -> dict:
        return {**super().describe(), "image": self.image_settings(), "classes": self.run.labels}

    def sample(self) -> dict:
        words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
        return {**super().sample(), "labels": [f"the digit {w}" for w in words]}

    def check_values(self, item, where):
        labels = item["labels"]
        if not labels:
            raise RequestError(422, f"field 'labels'{where} is empty; pass at least one candidate text")
        if len(labels) > self.limits.max_labels:
            raise RequestError(413, f"too many labels{where}: {len(labels)}, the limit is {self.limits.max_labels}")
        for i, text in enumerate(labels):
            if not text.strip():
                raise RequestError(422, f"field 'labels'{where}: label {i} is empty; every candidate text needs words")
            self._tokens(where, text)
        self._range(item, "top_k", 1, self.limits.max_top_k, where, "--max-top-k")
        self._image(item, where)
        return item

    @torch.no_grad()
    def predict(self, items):
        from ..data.tokenizers import encode_batch

        x = self.images(items)
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(tuple(it["labels"]), []).append(i)
        out: list[dict] = [{} for _ in items]
        for labels, idx in groups.items():
            enc = encode_batch(self.tokenizer, list(labels), truncation=False)
            classifier = self.model.encode_text(enc["input_ids"], enc["attention_mask"])
            probs = self.model.zero_shot_logits(x[idx], classifier).float().softmax(-1)
            for i, p in zip(idx, probs):
                top = _ranked(p, items[i]["top_k"], list(labels))
                out[i] = {**top[0], "top": top}
        wanted = [i for i, it in enumerate(items) if it["attention"]]
        if wanted and self.attention:
            for i, amap in zip(wanted, rollout_maps(self.model, x[wanted])):
                out[i]["attention"] = amap
        return out


class CausalLM(_Generation):
    use = "causal-lm"
    fields: ClassVar[dict[str, Field]] = {"prompt": Field("str", "the text to continue", required=True), "max_new_tokens": MAX_NEW,
              "do_sample": Field("bool", "sample instead of greedy decoding", default=False),
              "temperature": Field("float", "sampling temperature (> 0)"), "top_k": Field("int", "sample from the k best"),
              "top_p": Field("float", "nucleus sampling mass in (0, 1]"), "seed": Field("int", "random seed of sampling")}

    def check_values(self, item, where):
        self._range(item, "max_new_tokens", 1, self.limits.max_new_tokens, where, "--max-new-tokens")
        if not item["do_sample"]:
            given = [k for k in ("temperature", "top_k", "top_p", "seed") if item[k] is not None]
            if given:
                raise RequestError(422, f"field(s) {given}{where} only apply to sampling; add \"do_sample\": true")
        if item["temperature"] is not None and not 0 < item["temperature"] <= 100:
            raise RequestError(422, f"field 'temperature'{where} must be in (0, 100], got {item['temperature']}")
        if item["top_p"] is not None and not 0 < item["top_p"] <= 1:
            raise RequestError(422, f"field 'top_p'{where} must be in (0, 1], got {item['top_p']}")
        self._range(item, "top_k", 0, 10 ** 6, where)
        n = len(self.prompt_ids(item["prompt"]))
        if n + (item["max_new_tokens"] or min(32, self.limits.max_new_tokens)) > self.max_tokens:
            raise RequestError(413, f"too many tokens{where}: the prompt is {n} tokens and with the continuation it would "
                                    f"pass the limit of {self.max_tokens}; shorten the prompt or ask for fewer new tokens")
        return item

    def sample(self) -> dict:
        return {"prompt": "three hundred", "max_new_tokens": 8}

    def prompt_ids(self, prompt: str) -> list[int]:
        """As zoo.data.corpus.PydocLM encodes prompts: <s> then the text's tokens."""
        tok = self.tokenizer
        ids = tok(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids

    @torch.no_grad()
    def predict(self, items):
        out: list[dict] = [{} for _ in items]
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):  # same length and greedy settings: one batch without padding
            key = (len(self.prompt_ids(it["prompt"])), it["max_new_tokens"]) if not it["do_sample"] else ("sample", i)
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            it = items[idx[0]]
            ids = torch.tensor([self.prompt_ids(items[i]["prompt"]) for i in idx])
            # the request decides (do_sample defaults to false here), not the model's config.sampling: greedy
            # requests of one length share a batch
            kw = {"max_new_tokens": it["max_new_tokens"] or min(32, self.limits.max_new_tokens),
                  "do_sample": bool(it["do_sample"])}
            if it["do_sample"]:
                kw.update(do_sample=True, temperature=it["temperature"], top_k=it["top_k"], top_p=it["top_p"],
                          generator=torch.Generator().manual_seed(it["seed"] if it["seed"] is not None else 0))
            # unpadded: every prompt token is real, also a pad id the text named (generate would infer a mask from it)
            gen = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
            for i, row in zip(idx, gen):
                prompt_len = ids.shape[1]
                text = normalise(self.tokenizer.decode(row.tolist(), skip_special_tokens=True))
                cont = normalise(self.tokenizer.decode(row[prompt_len:].tolist(), skip_special_tokens=True))
                out[i] = {"text": text, "continuation": cont}
        return out


def text_encoder_use(run) -> type[Handler]:
    """Text encoders: the run's task says which head it trained; a bare model is asked through its output shape."""
    task = (run.task_class or "").rsplit(".", 1)[-1]
    if task == "MaskedLM":
        return FillMask
    if task == "SequenceClassification":
        return TextClassification
    if task:
        raise ValueError(f"zoo serve has no handler for text encoders trained as {task}; it serves SequenceClassification "
                         "and MaskedLM runs")
    from ..contract import example_inputs

    ex = example_inputs(run.model, batch=1, length=4)
    with torch.no_grad():
        out = run.model(*ex.args)
    if out.ndim == 2:
        return TextClassification
    if out.shape[-1] == getattr(run.model.config, "vocab_size", -1):
        return FillMask
    raise ValueError(f"{run.name} returns per-token outputs {tuple(out.shape)}; zoo serve serves sequence classifiers "
                     "and masked language models")


def handler_class(run) -> type[Handler]:
    """The handler of a loaded run (`zoo.runs.load_run`), chosen by the model's declared kind."""
    from ..contract import kind_of

    kind = kind_of(run.model)
    cls = {"image_classifier": ImageClassification, "encoder_decoder": TextGeneration, "recurrent": TextGeneration,
           "image_to_text": Captioning, "dual_encoder": ZeroShot, "decoder_only": CausalLM}.get(kind)
    if kind == "text_encoder":
        cls = text_encoder_use(run)
    if cls is None:
        raise ValueError(f"zoo serve has no handler for models of kind {kind!r}")
    return cls


def handler_for(run, limits: Limits, backend: str = "torch") -> Handler:
    cls = handler_class(run)
    cls.check_backend(backend)
    if cls is not ImageClassification and run.tokenizer is None:
        raise ValueError(f"{run.source} stores no tokenizer, and a {cls.use} model needs one to read text; serve a "
                         "checkpoint of `zoo fit` (or a zoo safetensors file saved with its tokenizer)")
    return cls(run, limits)
