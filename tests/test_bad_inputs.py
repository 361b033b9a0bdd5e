"""Bad inputs, one table: weights files, model inputs of every family, user data files.

Each case states its expected outcome: an error of a given type whose message contains the named
value / field / file and the fix, or correct handling (a check on the result). Add a case by
appending a `Case` to the table of its section.
"""
from __future__ import annotations

import errno
import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

import zoo
from zoo.hub import save_pretrained
from zoo.weights import WeightsFileError, WeightsWriteError, atomic_write, read_state_dict, save_safetensors


@dataclass
class Case:
    name: str
    act: Callable[[Path], object]  # run against a fresh tmp_path
    error: type[BaseException] | None = None  # None: the call must succeed
    contains: tuple[str, ...] = ()  # parts of the error message (formatted with tmp=<tmp_path>)
    check: Callable[[object, Path], None] | None = None  # on success: the result; after an error: None
    def __repr__(self):  # pytest ids
        return self.name


# ------------------------------------------------------------------------------------------- helpers
@functools.cache
def model(name: str):
    tiny = {
        "t5": ("t5_small", dict(num_layers=1, num_decoder_layers=1, d_model=16, d_ff=32, d_kv=8, num_heads=2,
                                vocab_size=64, dropout_rate=0.0)),
        "transformer": ("transformer_tiny", dict(num_encoder_layers=1, num_decoder_layers=1, d_model=16, num_heads=2,
                                                 dim_feedforward=32, vocab_size=64, max_len=64, dropout=0.0)),
        "recurrent": ("gru_seq2seq", dict(vocab_size=64, embed_dim=8, hidden_size=8, attn_dim=8, dropout=0.0)),
        "captioner": ("vit_captioner_mnist", dict(encoder_depth=1, depth=1, vocab_size=64, max_len=16, encoder_dim=16,
                                                  dim=16, encoder_heads=2, num_heads=2)),
        "clip": ("clip_tiny", dict(vision_layers=1, text_layers=1, vocab_size=64, context_length=16)),
        "bert": ("bert_tiny", dict(depth=1, dim=32, num_heads=2, vocab_size=64, max_positions=16, head="none")),
        "vit": ("vit_mnist_patch4", dict(depth=1, dim=16, num_heads=2)),
        "deit": ("vit_mnist_distilled", dict(depth=1, dim=16, num_heads=2)),
    }[name]
    return zoo.create_model(tiny[0], **tiny[1]).eval()


def ids(b=2, length=5, high=64, low=3):
    return torch.randint(low, high, (b, length))


def ones(b=2, length=5):
    return torch.ones(b, length, dtype=torch.long)


def zero_row(b=2, length=5, row=1):
    m = ones(b, length)
    m[row] = 0
    return m


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"w": torch.arange(64, dtype=torch.float32).view(8, 8), "b": torch.zeros(8)})


def torch_bytes(tmp: Path, obj, legacy: bool = False) -> bytes:
    p = tmp / "_obj.pt"
    torch.save(obj, p, _use_new_zipfile_serialization=not legacy)
    data = p.read_bytes()
    p.unlink()
    return data


class Marker:
    """A pickled object whose unpickling would create a file: proof that nothing was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class RawMarker(Marker):
    def __reduce__(self):
        return (open, (self.path, "w"))


def no_marker(_, tmp):
    assert not (tmp / "MARKER").exists(), "unpickling executed code"


def full_disk(tmp: Path, existing: bool):
    target = tmp / "model.safetensors"
    if existing:
        write(target, b"old weights")

    def write_fn(tmp_name):
        Path(tmp_name).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    atomic_write(target, write_fn)


def disk_left_clean(existing: bool):
    def check(_, tmp):
        target = tmp / "model.safetensors"
        assert (target.read_bytes() == b"old weights") if existing else not target.exists()
        assert [p.name for p in tmp.iterdir()] == (["model.safetensors"] if existing else [])  # temp file removed
    return check


# --------------------------------------------------------------------------------------- weights files
WEIGHTS = [
    Case("weights-missing", lambda t: read_state_dict(t / "nope.safetensors"), FileNotFoundError,
         ("{tmp}/nope.safetensors", "does not exist", "zoo fit")),
    Case("weights-missing-is-weights-error", lambda t: read_state_dict(t / "nope.pt"), WeightsFileError, ("does not exist",)),
    Case("weights-directory", lambda t: read_state_dict(t), WeightsFileError,
         ("is a directory", "model.safetensors", "zoo.from_hf")),
    Case("weights-empty-safetensors", lambda t: read_state_dict(write(t / "w.safetensors", b"")), WeightsFileError,
         ("{tmp}/w.safetensors", "empty (0 bytes)", "download or save it again")),
    Case("weights-empty-ckpt", lambda t: read_state_dict(write(t / "last.ckpt", b"")), WeightsFileError,
         ("last.ckpt", "empty (0 bytes)")),
    Case("weights-truncated-safetensors-data", lambda t: read_state_dict(write(t / "w.safetensors", safetensors_bytes()[:-100])),
         WeightsFileError, ("w.safetensors", "truncated", "of the 288 bytes", "download or save it again")),
    Case("weights-truncated-safetensors-header", lambda t: read_state_dict(write(t / "w.safetensors", safetensors_bytes()[:40])),
         WeightsFileError, ("w.safetensors", "truncated", "header announces")),
    Case("weights-truncated-zip-pt", lambda t: read_state_dict(write(t / "w.pt", torch_bytes(t, {"w": torch.zeros(64)})[:300])),
         WeightsFileError, ("w.pt", "damaged or truncated", "download or save it again")),
    Case("weights-truncated-legacy-pt",
         lambda t: read_state_dict(write(t / "w.bin", torch_bytes(t, {"w": torch.zeros(64)}, legacy=True)[:200])),
         WeightsFileError, ("w.bin", "damaged or truncated")),
    Case("weights-text-renamed-safetensors", lambda t: read_state_dict(write(t / "w.safetensors", "just some notes\n" * 4)),
         WeightsFileError, ("w.safetensors", "not a weights file", "named like one", "text file", ".safetensors file")),
    Case("weights-png-renamed-ckpt", lambda t: read_state_dict(write(t / "w.ckpt", b"\x89PNG\r\n\x1a\n" + bytes(200))),
         WeightsFileError, ("w.ckpt", "not a weights file", "PNG image")),
    Case("weights-png-renamed-pt", lambda t: read_state_dict(write(t / "w.pt", b"\x89PNG\r\n\x1a\n" + bytes(200))),
         WeightsFileError, ("w.pt", "PNG image")),
    Case("weights-html-page", lambda t: read_state_dict(write(t / "w.safetensors", "<!DOCTYPE html><html>Sign in</html>")),
         WeightsFileError, ("w.safetensors", "HTML", "web page")),
    Case("weights-git-lfs-pointer",
         lambda t: read_state_dict(write(t / "w.safetensors", "version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")),
         WeightsFileError, ("Git LFS pointer", "git lfs pull")),
    Case("weights-corrupt-safetensors-header",
         lambda t: read_state_dict(write(t / "w.safetensors", (lambda b: b[:9] + b"\xff\xfe garbage" + b[19:])(safetensors_bytes()))),
         WeightsFileError, ("w.safetensors", "safetensors header is corrupt", "download or save it again")),
    Case("weights-pickle-with-code-zip", lambda t: read_state_dict(write(t / "evil.pt", torch_bytes(t, {"w": Marker(t / "MARKER")}))),
         WeightsFileError, ("evil.pt", "pickled Python objects", "weights-only", "posix.system", "safetensors.torch.save_file"),
         check=no_marker),
    Case("weights-pickle-with-code-raw",
         lambda t: read_state_dict(write(t / "evil.ckpt", pickle.dumps({"w": RawMarker(t / "MARKER")}, protocol=2))),
         WeightsFileError, ("evil.ckpt", "pickled Python objects", "never unpickles code"), check=no_marker),
    Case("weights-pickle-with-code-via-create-model",
         lambda t: zoo.create_model("vit_digits", pretrained=str(write(t / "evil.pt", torch_bytes(t, {"w": Marker(t / "MARKER")})))),
         WeightsFileError, ("evil.pt", "pickled Python objects"), check=no_marker),
    Case("weights-pickle-with-code-ckpt-via-load-run",
         lambda t: zoo.runs.load_run(str(write(t / "evil.ckpt", torch_bytes(t, {"state_dict": {"model.w": Marker(t / "MARKER")}})))),
         ValueError, ("evil.ckpt", "pickled Python objects other than tensors", "posix.system", "zoo does not load them",
                      "never unpickles code", "nothing in the file was executed", "re-save its tensors as safetensors"),
         check=no_marker),
    Case("weights-pickle-with-code-ckpt-via-create-model",
         lambda t: zoo.create_model("vit_mnist", pretrained=str(write(t / "evil.ckpt", torch_bytes(t, {"state_dict": {"model.w": Marker(t / "MARKER")}})))),
         ValueError, ("evil.ckpt", "pickled Python objects other than tensors", "re-save its tensors as safetensors"),
         check=no_marker),
    Case("weights-raw-pickle-with-code-ckpt-via-load-run",
         lambda t: zoo.runs.load_run(str(write(t / "evil.ckpt", pickle.dumps({"state_dict": RawMarker(t / "MARKER")}, protocol=2)))),
         ValueError, ("evil.ckpt", "pickled Python objects other than tensors", "never unpickles code"), check=no_marker),
    Case("weights-torch-pickle-named-safetensors",
         lambda t: read_state_dict(write(t / "model.safetensors", torch_bytes(t, {"w": torch.zeros(2)}))),
         WeightsFileError, ("model.safetensors", "a torch pickle (written by torch.save), not safetensors",
                            "safetensors.torch.save_file")),
    Case("weights-torch-pickle-with-code-in-a-save-pretrained-folder",
         lambda t: zoo.from_pretrained(write(save_pretrained(zoo.create_model("vit_digits"), t / "m") / "model.safetensors",
                                             torch_bytes(t, {"w": Marker(t / "MARKER")})).parent),
         WeightsFileError, ("m/model.safetensors", "a torch pickle", "not safetensors", "nothing in it was executed"),
         check=no_marker),
    Case("weights-ckpt-with-python-objects",
         lambda t: read_state_dict(write(t / "run.ckpt", torch_bytes(t, {"state_dict": {}, "hp": __import__("argparse").Namespace(a=1)}))),
         WeightsFileError, ("run.ckpt", "argparse.Namespace", "safetensors.torch.save_file")),
    Case("weights-pt-holding-a-list", lambda t: read_state_dict(write(t / "w.pt", torch_bytes(t, [torch.zeros(2)]))),
         WeightsFileError, ("w.pt", "holds a list", "state_dict()")),
    Case("weights-pt-not-flat", lambda t: read_state_dict(write(t / "w.pt", torch_bytes(t, {"w": torch.zeros(2), "epoch": 3}))),
         WeightsFileError, ("w.pt", "entry 'epoch'", "int")),
    Case("weights-safetensors-named-pt-loads", lambda t: read_state_dict(write(t / "w.pt", safetensors_bytes())),
         check=lambda sd, t: sorted(sd) == ["b", "w"] or pytest.fail(str(sd))),
    Case("weights-legacy-pt-loads", lambda t: read_state_dict(write(t / "w.pt", torch_bytes(t, {"w": torch.ones(3)}, legacy=True))),
         check=lambda sd, t: torch.equal(sd["w"], torch.ones(3)) or pytest.fail("wrong tensor")),
    Case("weights-full-disk-overwrite", lambda t: full_disk(t, existing=True), WeightsWriteError,
         ("{tmp}/model.safetensors", "no space left", "left untouched"), check=disk_left_clean(True)),
    Case("weights-full-disk-new-file-is-oserror", lambda t: full_disk(t, existing=False), OSError,
         ("{tmp}/model.safetensors", "no space left", "nothing was written"), check=disk_left_clean(False)),
    Case("weights-save-then-read-roundtrip",
         lambda t: (save_safetensors(torch.nn.Linear(2, 3), t / "lin.safetensors"), read_state_dict(t / "lin.safetensors"))[1],
         check=lambda sd, t: sorted(sd) == ["bias", "weight"] or pytest.fail(str(sd))),
]


# ---------------------------------------------------------------------------------------- model inputs
def t5(*a, **k):
    return model("t5")(*a, **k)


def tr(*a, **k):
    return model("transformer")(*a, **k)


def rnn(*a, **k):
    return model("recurrent")(*a, **k)


def cap(*a, **k):
    return model("captioner")(*a, **k)


def grey(b=2, size=28):
    return torch.randn(b, 1, size, size)


def decode_with_cache_and_full_mask(_):
    """Incremental decoding: the decoder mask covers past + new positions (correct handling)."""
    from zoo.core import KVCache

    m = model("transformer")
    memory, cache = m.encode(ids(2, 5), ones(2, 5)), KVCache()
    m.decode(ids(2, 3), memory, ones(2, 5), ones(2, 3), cache=cache)
    return m.decode(ids(2, 1), memory, ones(2, 5), ones(2, 4), cache=cache)


def flops(grad_mode):
    from torch.utils.flop_counter import FlopCounterMode

    def run(_):
        with grad_mode(), FlopCounterMode(display=False) as counter:
            model("bert")(ids(2, 8), ones(2, 8))
        return counter.get_total_flops()
    return run


MODEL_INPUTS = [
    # T5
    Case("t5-ids-outside-vocab", lambda t: t5(torch.tensor([[3, 64, 5]]), ids(1, 2)), ValueError,
         ("input_ids", "outside [0, 64)", "max id 64", "vocab_size is 64", "tokenizer and the model disagree")),
    Case("t5-decoder-ids-outside-vocab", lambda t: t5(ids(1, 3), torch.tensor([[0, 70]])), ValueError,
         ("decoder_input_ids", "max id 70", "vocab_size is 64")),
    Case("t5-decoder-ids-minus-100", lambda t: t5(ids(1, 3), torch.tensor([[0, -100]])), ValueError,
         ("decoder_input_ids", "min id -100", "loss-ignore label", "shift_right")),
    Case("t5-forward-without-decoder-ids", lambda t: t5(ids(2, 4), attention_mask=ones(2, 4)), TypeError,
         ("T5.forward needs decoder_input_ids", "zoo.generation.shift_right(labels, 0, 0)", "generate")),
    Case("t5-zero-length", lambda t: t5(ids(2, 0), ids(2, 2)), ValueError, ("input_ids has length 0", "at least one token")),
    Case("t5-mask-shape", lambda t: t5(ids(2, 4), ids(2, 2), attention_mask=ones(2, 5)), ValueError,
         ("attention_mask has shape (2, 5) but input_ids has (2, 4)",)),
    Case("t5-mask-row-all-zero", lambda t: t5(ids(2, 5), ids(2, 2), attention_mask=zero_row()), ValueError,
         ("row 1 has no token to attend to", "1 = token, 0 = padding")),
    Case("t5-batch-sizes-disagree", lambda t: t5(ids(3, 4), ids(2, 2)), ValueError,
         ("batch sizes disagree", "input_ids has 3", "decoder_input_ids has 2")),
    Case("t5-too-long-with-max-len",
         lambda t: zoo.create_model("t5_small", num_layers=1, num_decoder_layers=1, d_model=16, d_ff=16, d_kv=8, num_heads=2,
                                    vocab_size=64, max_len=8)(ids(1, 9), ids(1, 2)), ValueError,
         ("input_ids of 9 positions exceeds the model's maximum of 8 (max_len)", "truncation=True")),
    Case("t5-encoder-only-config-on-full-class",
         lambda t: zoo.create_model("t5_small", num_layers=1, d_model=16, d_ff=16, d_kv=8, num_heads=2, encoder_only=True),
         ValueError, ("T5Encoder",)),
    Case("t5-encoder-has-no-decoder",
         lambda t: __import__("zoo.models.t5", fromlist=["T5Encoder"]).T5Encoder(model("t5").config).decode(ids(1, 2), torch.zeros(1, 3, 16)),
         TypeError, ("encoder-only", "no decoder")),
    # vanilla transformer
    Case("transformer-ids-outside-vocab", lambda t: tr(torch.tensor([[3, 99]]), ids(1, 2)), ValueError,
         ("input_ids", "max id 99", "vocab_size is 64", "vocab_size >= 100")),
    Case("transformer-forward-without-decoder-ids", lambda t: tr(ids(2, 4), None, ones(2, 4)), TypeError,
         ("EncoderDecoderTransformer.forward needs decoder_input_ids", "shift_right(labels, 1, 0)")),
    Case("transformer-source-too-long", lambda t: tr(ids(1, 65), ids(1, 2)), ValueError,
         ("input_ids of 65 positions exceeds the model's maximum of 64 (max_len)",)),
    Case("transformer-decoder-mask-shape", lambda t: tr(ids(2, 4), ids(2, 3), decoder_attention_mask=ones(2, 4)), ValueError,
         ("decoder_attention_mask has shape (2, 4) but decoder_input_ids has (2, 3)",)),
    Case("transformer-float-ids", lambda t: tr(ids(2, 4).float(), ids(2, 2)), TypeError, ("torch.float32", "input_ids.long()")),
    Case("transformer-one-dim-ids", lambda t: tr(ids(1, 4)[0], ids(1, 2)), ValueError, ("(batch, length)", "unsqueeze(0)")),
    Case("transformer-batch-sizes-disagree", lambda t: model("transformer").decode(ids(2, 2), torch.zeros(3, 4, 16)), ValueError,
         ("batch sizes disagree", "memory has 3", "decoder_input_ids has 2")),
    Case("transformer-additive-mask", lambda t: tr(ids(2, 4), ids(2, 2), torch.tensor([[0.0] * 4, [0.0, 0.0, float("-inf"), 0.0]])),
         ValueError, ("additive mask", "0/1 attention_mask")),
    Case("transformer-cached-decoding-mask-covers-past", decode_with_cache_and_full_mask,
         check=lambda out, t: out.shape == (2, 1, 64) or pytest.fail(str(out.shape))),
    # recurrent seq2seq
    Case("recurrent-ids-outside-vocab", lambda t: rnn(torch.tensor([[3, 64]]), ids(1, 2)), ValueError,
         ("input_ids", "max id 64", "vocab_size is 64")),
    Case("recurrent-forward-without-decoder-ids", lambda t: rnn(ids(2, 4)), TypeError,
         ("RecurrentSeq2Seq.forward needs decoder_input_ids", "shift_right")),
    Case("recurrent-mask-row-all-zero", lambda t: rnn(ids(2, 5), ids(2, 2), attention_mask=zero_row(row=0)), ValueError,
         ("row 0 has no token to attend to", "all padding")),
    Case("recurrent-batch-sizes-disagree", lambda t: rnn(ids(2, 4), ids(1, 2)), ValueError, ("batch sizes disagree",)),
    # captioner (images in, decoder ids)
    Case("captioner-decoder-ids-outside-vocab", lambda t: cap(grey(1), torch.tensor([[1, 64]])), ValueError,
         ("decoder_input_ids", "max id 64", "vocab_size is 64")),
    Case("captioner-forward-without-decoder-ids", lambda t: cap(grey(2)), TypeError,
         ("ViTCaptioner.forward needs decoder_input_ids", "shift_right(labels, 1, 0)")),
    Case("captioner-channels-last-images", lambda t: cap(torch.randn(2, 28, 28, 1), ids(2, 3)), ValueError,
         ("channels-last", ".permute(0, 3, 1, 2)")),
    Case("captioner-batch-sizes-disagree", lambda t: cap(grey(2), ids(3, 3)), ValueError,
         ("images has 2", "decoder_input_ids has 3")),
    Case("captioner-decoder-too-long", lambda t: cap(grey(1), ids(1, 17)), ValueError,
         ("decoder_input_ids of 17 positions exceeds the model's maximum of 16 (max_len)",)),
    # CLIP
    Case("clip-text-ids-outside-vocab", lambda t: model("clip").encode_text(torch.tensor([[5, 63, 64]])), ValueError,
         ("input_ids", "max id 64", "vocab_size is 64")),
    Case("clip-text-too-long", lambda t: model("clip").encode_text(ids(1, 17)), ValueError,
         ("exceeds the model's maximum of 16 (context_length)",)),
    Case("clip-text-mask-row-all-zero", lambda t: model("clip").encode_text(ids(2, 5), zero_row()), ValueError,
         ("row 1 has no token to attend to",)),
    Case("clip-uint8-images", lambda t: model("clip").encode_image(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8)),
         TypeError, ("torch.uint8", "float", "normalise")),
    # BERT
    Case("bert-zero-length", lambda t: model("bert")(ids(2, 0)), ValueError, ("length 0",)),
    Case("bert-mask-row-all-zero", lambda t: model("bert")(ids(3, 5), zero_row(3, 5, row=2)), ValueError,
         ("row 2 has no token to attend to",)),
    Case("bert-too-long", lambda t: model("bert")(ids(1, 17)), ValueError,
         ("input_ids of 17 positions exceeds the model's maximum of 16 (max_positions)", "larger max_positions")),
    Case("bert-token-types-outside", lambda t: model("bert")(ids(1, 4), token_type_ids=torch.full((1, 4), 2)), ValueError,
         ("token_type_ids must lie in [0, 2)", "max id 2")),
    Case("bert-left-padded-row-is-fine", lambda t: model("bert")(ids(2, 5), torch.tensor([[0, 0, 0, 0, 1], [1] * 5])),
         check=lambda out, t: torch.isfinite(out).all() or pytest.fail("non-finite")),
    Case("bert-flops-under-inference-mode", flops(torch.inference_mode), check=lambda n, t: n > 0 or pytest.fail("no flops")),
    Case("bert-flops-under-no-grad", flops(torch.no_grad), check=lambda n, t: n > 0 or pytest.fail("no flops")),
    # ViT / DeiT / images
    Case("vit-single-image-without-batch", lambda t: model("vit")(torch.randn(1, 28, 28)), ValueError,
         ("(batch, 1, H, W)", "unsqueeze(0)")),
    Case("vit-wrong-channels", lambda t: model("vit")(torch.randn(2, 3, 28, 28)), ValueError,
         ("expected images of shape (batch, 1, H, W)", "in_chans=3")),
    Case("vit-channels-last", lambda t: model("vit")(torch.randn(2, 28, 28, 1)), ValueError,
         ("got (2, 28, 28, 1)", "channels-last", "images.permute(0, 3, 1, 2)")),
    Case("vit-channels-last-uint8", lambda t: model("vit")(torch.zeros(2, 28, 28, 1, dtype=torch.uint8)), ValueError,
         (".permute(0, 3, 1, 2)", "torch.uint8", "float() / 255")),
    Case("vit-uint8", lambda t: model("vit")(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)), TypeError,
         ("expected float images", "torch.uint8", "normalise")),
    Case("vit-size-not-multiple-of-patch", lambda t: model("vit")(grey(1, 30)), ValueError,
         ("image size 30x30 is not divisible by patch_size=4", "resize or pad")),
    Case("vit-smaller-than-a-patch", lambda t: model("vit")(torch.randn(1, 1, 0, 0)), ValueError, ("0x0", "patch_size=4")),
    Case("vit-video-tensor", lambda t: model("vit")(torch.randn(1, 2, 1, 28, 28)), ValueError, ("(batch, 1, H, W)",)),
    Case("vit-other-multiple-size-interpolates", lambda t: model("vit").forward_features(grey(1, 32)),
         check=lambda out, t: out.shape == (1, 1 + 8 * 8, 16) or pytest.fail(str(out.shape))),
    Case("deit-numpy-images", lambda t: model("deit")(torch.randn(1, 1, 28, 28).numpy()), TypeError, ("torch.from_numpy",)),
    Case("deit-grey-expected-rgb-given", lambda t: model("deit")(torch.randn(1, 3, 28, 28)), ValueError, ("in_chans=3",)),
]


# ----------------------------------------------------------------------------------------- data files
def classification(path: Path, **kw):
    from zoo.data.local import LocalTextClassification

    return LocalTextClassification(str(path), vocab_size=100, **kw).examples


def csv_rows(n=12, blank_label_at=(), blank_text_at=()):
    lines = ["text,label"]
    for i in range(n):
        text = "" if i in blank_text_at else f"sample {i}"
        label = "" if i in blank_label_at else ("pos" if i % 2 else "neg")
        lines.append(f"{text},{label}")
    return "\n".join(lines) + "\n"


LATIN1 = ("text,label\n" + "".join(f"row {i},{'pos' if i % 2 else 'neg'}\n" for i in range(6)) + "café,pos\n").encode("latin-1")

DATA_FILES = [
    Case("data-blank-labels", lambda t: classification(write(t / "train.csv", csv_rows(blank_label_at=(1, 3)))),
         ValueError, ("{tmp}/train.csv", "column 'label'", "lines 3, 5", "header is line 1", "ds.filter", "class named 'nan'")),
    Case("data-blank-texts", lambda t: classification(write(t / "train.csv", csv_rows(blank_text_at=(0,)))),
         ValueError, ("train.csv", "column 'text'", "lines 2 ", "fill them in")),
    Case("data-whitespace-label", lambda t: classification(write(t / "train.csv", csv_rows().replace("sample 4,neg", "sample 4,  "))),
         ValueError, ("column 'label'", "lines 6 ")),
    Case("data-jsonl-null-label",
         lambda t: classification(write(t / "train.jsonl", "\n".join(
             '{"text": "t%d", "label": %s}' % (i, "null" if i == 1 else '"%s"' % ("a" if i % 2 else "b")) for i in range(6)))),
         ValueError, ("train.jsonl", "rows 2 (counting records from 1)")),
    Case("data-invalid-utf8", lambda t: classification(write(t / "train.csv", LATIN1)), ValueError,
         ("{tmp}/train.csv", "not valid utf-8", f"byte 0xe9 at offset {LATIN1.index(bytes([0xe9]))}", "line 8",
          "encoding='cp1252'", "iconv")),
    Case("data-invalid-utf8-with-encoding-given", lambda t: classification(write(t / "train.csv", LATIN1), encoding="latin-1"),
         check=lambda ex, t: any(e["text"] == "café" for s in ex.values() for e in s) or pytest.fail("not decoded")),
    Case("data-utf16", lambda t: classification(write(t / "train.csv", csv_rows().encode("utf-16"))), ValueError,
         ("train.csv", "UTF-16", "encoding='utf-16'")),
    Case("data-empty-file", lambda t: classification(write(t / "train.csv", b"")), ValueError,
         ("{tmp}/train.csv", "empty (0 bytes)", "header row with the column(s) ['text', 'label']")),
    Case("data-header-only", lambda t: classification(write(t / "train.csv", "text,label\n")), ValueError,
         ("train.csv", "no rows")),
    Case("data-missing-column", lambda t: classification(write(t / "train.csv", csv_rows()), label_column="sentiment"),
         KeyError, ("no column(s) ['sentiment']", "its columns are ['text', 'label']", "--data.")),
    Case("data-single-class", lambda t: classification(write(t / "train.csv", csv_rows().replace(",neg", ",pos"))),
         ValueError, ("train.csv", "single class ('pos' in all 12 rows)", "at least two")),
    Case("data-label-na-is-a-class", lambda t: classification(write(t / "train.csv", csv_rows().replace(",neg", ",NA"))),
         check=lambda ex, t: {e["label"] for s in ex.values() for e in s} == {"NA", "pos"} or pytest.fail("NA lost")),
    Case("data-malformed-jsonl", lambda t: classification(write(t / "train.jsonl", '{"text": "a", "label": "x"}\n{oops\n')),
         ValueError, ("train.jsonl", "not valid jsonl", "one JSON object per line")),
    Case("data-directory", lambda t: classification(t), ValueError, ("is a directory",)),
]

CASES = WEIGHTS + MODEL_INPUTS + DATA_FILES


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_bad_input(case: Case, tmp_path):
    if case.error is None:
        with torch.no_grad():
            result = case.act(tmp_path)
        if case.check is not None:
            case.check(result, tmp_path)
        return
    with pytest.raises(case.error) as info, torch.no_grad():
        case.act(tmp_path)
    message = str(info.value)
    for part in case.contains:
        assert part.format(tmp=tmp_path) in message, f"{part!r} not in: {message}"
    # never recommend unpickling untrusted files (torch's own advice: "Re-running `torch.load` with `weights_only` set
    # to `False` ...")
    assert "weights_only=False" not in message and "re-running" not in message.lower() and "to `False`" not in message
    if case.check is not None:
        case.check(None, tmp_path)


def test_table_has_unique_names():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 45


def test_a_safetensors_header_size_that_looks_like_a_pickle_is_read(tmp_path):
    # the 8-byte header size comes first, and 0x80 is a pickle's first byte: a float16 vit_mnist tag whose header
    # size was 128 modulo 256 was refused as "a torch pickle"
    low_byte = 0x80
    from safetensors.torch import save_file

    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    for pad in range(0, 2048):
        path = tmp_path / f"w{pad}.safetensors"
        save_file(tensors, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == low_byte:
            break
        path.unlink()
    else:
        pytest.fail(f"no header size with low byte {low_byte:#x}")
    torch.testing.assert_close(read_state_dict(path)["w"], tensors["w"])
