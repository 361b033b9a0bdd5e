"""save_pretrained / from_pretrained / push_to_hub / hf-hub: loading, offline, through huggingface_hub's cache layout."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import zoo
from zoo.contract import example_inputs
from zoo.hub import HubError, save_pretrained
from zoo.registry import _entry
from zoo.runs import load_run


def smallest_per_family() -> list[str]:
    families: dict[str, str] = {}
    for name in zoo.list_models():
        fam = _entry(name).family
        if fam not in families or zoo.model_info(name)["params"] < zoo.model_info(families[fam])["params"]:
            families[fam] = name
    return sorted(families.values())


def _outputs(model, ex):
    with torch.no_grad():
        out = model(*ex.args)
    out = out[0] if isinstance(out, tuple) else out
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("name", smallest_per_family())
def test_save_pretrained_round_trips_every_family(name, tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model(name).eval()
    folder = model.save_pretrained(tmp_path / "m")
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == name and config["zoo"]["model"] == name
    loaded = zoo.from_pretrained(str(folder))
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    ex = example_inputs(model, batch=2, length=6)
    torch.testing.assert_close(_outputs(loaded, ex), _outputs(model, ex), rtol=0, atol=0)


def test_half_precision_file_is_half_the_size_and_loads_as_float32(tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model("vit_digits").eval()
    full = save_pretrained(model, tmp_path / "f32")
    half = save_pretrained(model, tmp_path / "f16", dtype="float16")
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    loaded = zoo.from_pretrained(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ex = example_inputs(model, batch=2)
    torch.testing.assert_close(_outputs(loaded, ex), _outputs(model.half().float(), ex), rtol=0, atol=0)


def test_tokenizer_and_record_travel_with_the_directory(tmp_path):
    from zoo.data.tokenizers import same_tokenizer, train_tokenizer
    from zoo.runs import Run

    tok = train_tokenizer("bpe", ["three hundred and twelve", "trois cent douze", "forty two"] * 20, vocab_size=300)
    model = zoo.create_model("transformer_tiny", vocab_size=len(tok), d_model=32, num_heads=2, dim_feedforward=64,
                             num_encoder_layers=1, num_decoder_layers=1).eval()
    model.model_name = "transformer_tiny"
    run = Run(model, "transformer_tiny", "memory", {"labels": None, "cli_config": "model: {}\n"}, tok)
    folder = save_pretrained(run, tmp_path / "t")
    assert (folder / "tokenizer.json").is_file()
    back = load_run(str(folder))
    assert same_tokenizer(back.tokenizer, tok) and back.cli_config == "model: {}\n"
    assert back.model.config == model.config


def test_existing_directory_is_never_overwritten_and_failed_writes_leave_nothing(tmp_path, monkeypatch):
    model = zoo.create_model("vit_digits")
    target = tmp_path / "m"
    target.mkdir()
    (target / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        save_pretrained(model, target)
    # overwrite=True replaces only a folder save_pretrained wrote, and never the current folder
    with pytest.raises(FileExistsError, match="holds files that save_pretrained did not write"):
        save_pretrained(model, target, overwrite=True)
    monkeypatch.chdir(target)
    with pytest.raises(FileExistsError, match="is the current folder"):
        save_pretrained(model, ".", overwrite=True)
    monkeypatch.chdir(tmp_path)
    assert (target / "mine.txt").read_text() == "user data"
    first = save_pretrained(model, tmp_path / "saved")
    assert save_pretrained(model, first, overwrite=True) == first and (first / "model.safetensors").is_file()
    shutil.rmtree(first)

    from zoo import weights

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind


def test_a_file_in_the_way_is_named_and_kept(tmp_path):
    """save_pretrained("afile", overwrite=True) over a file said NotADirectoryError / "holds files that save_pretrained
    did not write"; without overwrite "exists and is not empty". One line naming the file; the file is kept."""
    model = zoo.create_model("vit_digits")
    afile = tmp_path / "afile"
    afile.write_text("user data")
    for target in (afile, afile / "sub"):
        for overwrite in (False, True):
            with pytest.raises(FileExistsError, match=re.escape(f"'{afile}' is a file, not a folder; save_pretrained "
                                                                "writes a folder and never replaces a file: pick a new directory")):
                save_pretrained(model, target, overwrite=overwrite)
    assert afile.read_text() == "user data" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_bad_dtype_and_bad_directory_are_named(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        save_pretrained(zoo.create_model("vit_digits"), tmp_path / "x", dtype="int4")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"zoo": {"nothing": 1}}))
    with pytest.raises(HubError, match="is not a zoo config"):
        zoo.from_pretrained(str(tmp_path / "bad"))


# -- the Hub: a local cache laid out as huggingface_hub lays it out, used offline ---------------------

def lay_out_in_hub_cache(folder: Path, cache: Path, repo_id: str, commit: str = "0" * 40) -> Path:
    """models--org--name/{blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/main}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo / "blobs" / digest)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / digest)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    return cache


def test_hf_hub_loading_from_the_offline_cache(tmp_path, offline_cache):
    torch.manual_seed(0)
    model = zoo.create_model("vit_digits").eval()
    lay_out_in_hub_cache(save_pretrained(model, tmp_path / "m"), offline_cache, "someone/vit-digits")
    loaded = zoo.create_model("vit_digits", pretrained="hf-hub:someone/vit-digits").eval()
    ex = example_inputs(model, batch=2)
    torch.testing.assert_close(_outputs(loaded, ex), _outputs(model, ex), rtol=0, atol=0)
    torch.testing.assert_close(_outputs(zoo.from_pretrained("someone/vit-digits"), ex), _outputs(model, ex))
    with pytest.raises(HubError, match="not in the local cache"):
        zoo.create_model("vit_digits", pretrained="hf-hub:someone/absent")
    with pytest.raises(ValueError, match="holds a vit_digits, not a vit_mnist"):
        zoo.create_model("vit_mnist", pretrained="hf-hub:someone/vit-digits")


def test_push_to_hub_uploads_a_loadable_folder(tmp_path, offline_cache):
    """push_to_hub against a local stand-in of HfApi: what it uploads, laid out in the cache, loads back."""

    class StandInApi:
        def __init__(self):
            self.calls = []

        def create_repo(self, repo_id, private=None, exist_ok=False):
            self.calls.append(("create_repo", repo_id, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            self.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            lay_out_in_hub_cache(Path(folder_path), offline_cache, repo_id, commit="1" * 40)
            return f"https://huggingface.co/{repo_id}/commit/{'1' * 40}"

    torch.manual_seed(0)
    model = zoo.create_model("vit_digits").eval()
    api = StandInApi()
    url = model.push_to_hub("me/pushed", api=api, dtype="float16")
    assert url.endswith("1" * 40)
    assert api.calls[0] == ("create_repo", "me/pushed", True)
    assert api.calls[1][2] == ["README.md", "config.json", "model.safetensors"]
    loaded = zoo.from_pretrained("hf-hub:me/pushed")
    ex = example_inputs(model, batch=2)
    torch.testing.assert_close(_outputs(loaded, ex), _outputs(model.half().float(), ex), rtol=0, atol=0)


@pytest.mark.parametrize("code", ["import zoo; zoo.from_pretrained", "import zoo; zoo.hub.save_pretrained",
                                  "from zoo import from_pretrained"])
def test_the_lazy_hub_names_work_in_a_fresh_process(code):
    """`zoo.hub` / `zoo.from_pretrained` are loaded on first use; that use must not recurse into itself."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]


def test_from_pretrained_keeps_what_the_weights_expect_and_the_tokenizer(tmp_path):
    """A model from from_pretrained reads images as its weights were trained (MNIST's mean/std, not 0.5), and
    saving a text model made from a tag writes its tokenizer beside the weights."""
    tag = zoo.from_pretrained("vit_mnist.mnist5k")
    assert zoo.resolve_data_config(tag)["mean"] == (0.1307,) and zoo.resolve_data_config(tag)["std"] == (0.3081,)
    again = zoo.from_pretrained(tag.save_pretrained(tmp_path / "vit"))
    assert zoo.resolve_data_config(again) == zoo.resolve_data_config(tag)
    text = zoo.create_model("transformer_numbers.en_fr", pretrained=True)
    folder = text.save_pretrained(tmp_path / "tn")
    assert (folder / "tokenizer.json").is_file()
    assert load_run(str(folder)).tokenizer("trois cent douze")["input_ids"] == \
        zoo.get_tokenizer("transformer_numbers.en_fr")("trois cent douze")["input_ids"]


def test_a_reshaped_tag_model_does_not_carry_the_tags_card(tmp_path):
    """After reset_classifier the saved folder no longer names the tag, its measured metric or its 10 labels."""
    model = zoo.create_model("vit_mnist.mnist5k", pretrained=True)
    model.reset_classifier(3)
    folder = model.save_pretrained(tmp_path / "three")
    record = json.loads((folder / "config.json").read_text())["zoo"]
    assert record["config"]["num_classes"] == 3
    assert not {"tag", "metric", "labels", "cli_config"} & set(record), sorted(record)
    card, measured = (folder / "README.md").read_text(), str(zoo.pretrained_cfg("vit_mnist.mnist5k").metric["value"])
    assert "# vit_mnist.mnist5k" not in card and 'create_model("vit_mnist.mnist5k"' not in card and measured not in card
    assert record["derived_from"] == "vit_mnist.mnist5k" and "Derived from the shipped `vit_mnist.mnist5k`" in card
    same = zoo.create_model("vit_mnist.mnist5k", pretrained=True).save_pretrained(tmp_path / "same")
    assert json.loads((same / "config.json").read_text())["zoo"]["tag"] == "vit_mnist.mnist5k"


def test_a_tag_model_trained_further_does_not_carry_the_tags_metric(tmp_path):
    """Same shapes, other weights: the saved folder drops the tag and its measured metric, keeps the labels and the
    preprocessing, and its card says which tag it was derived from. Unchanged weights keep the tag, also after a
    float16 -> float32 load and a save/load round trip (in float32 or float16)."""
    def saved(model, name, **kw):
        folder = model.save_pretrained(tmp_path / name, **kw)
        return json.loads((folder / "config.json").read_text())["zoo"], (folder / "README.md").read_text(), folder

    value = zoo.pretrained_cfg("vit_mnist.mnist5k").metric["value"]  # the tag's measured test accuracy
    tag = zoo.create_model("vit_mnist.mnist5k", pretrained=True)
    record, card, folder = saved(tag, "same")
    assert record["tag"] == "vit_mnist.mnist5k" and record["metric"]["value"] == value and str(value) in card
    for again, kw in (("again", {}), ("again16", {"dtype": "float16"})):
        record, _, _ = saved(zoo.from_pretrained(folder), again, **kw)
        assert record["tag"] == "vit_mnist.mnist5k" and record["metric"]["value"] == value, again

    torch.manual_seed(0)
    model = zoo.create_model("vit_mnist.mnist5k", pretrained=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    tiny = zoo.create_model("vit_mnist.mnist5k", pretrained=True)
    with torch.no_grad():  # a change float16 cannot show: the weights are still not the tag's
        tiny.head.bias[0] += tiny.head.bias[0].abs() * 1e-5 + 1e-30
    for name, changed in (("trained", model), ("tiny", tiny)):
        record, card, folder = saved(changed, name)
        assert not {"tag", "metric", "pretrained_cfg", "command"} & set(record), (name, sorted(record))
        assert record["derived_from"] == "vit_mnist.mnist5k" and record["labels"] == [str(i) for i in range(10)]
        assert str(value) not in card and 'create_model("vit_mnist.mnist5k"' not in card
        assert "Derived from the shipped `vit_mnist.mnist5k`" in card
        back = zoo.from_pretrained(folder)
        assert zoo.resolve_data_config(back)["mean"] == (0.1307,) and zoo.resolve_data_config(back)["std"] == (0.3081,)
        assert saved(back, name + "_again")[0]["derived_from"] == "vit_mnist.mnist5k"

def test_from_pretrained_takes_transformers_hub_arguments(tmp_path, offline_cache, monkeypatch):
    """revision (a branch or a commit hash), cache_dir and local_files_only choose the snapshot, as in transformers;
    they are not read as model overrides."""
    torch.manual_seed(0)
    old, new = zoo.create_model("vit_digits").eval(), zoo.create_model("vit_digits").eval()
    lay_out_in_hub_cache(save_pretrained(old, tmp_path / "old"), offline_cache, "org/vitd", commit="a" * 40)
    lay_out_in_hub_cache(save_pretrained(new, tmp_path / "new"), offline_cache, "org/vitd", commit="b" * 40)  # main
    ex = example_inputs(old, batch=2)
    for revision, model in (("main", new), ("a" * 40, old), ("b" * 40, new)):
        loaded = zoo.from_pretrained("org/vitd", revision=revision, local_files_only=True)
        torch.testing.assert_close(_outputs(loaded, ex), _outputs(model, ex), rtol=0, atol=0)
    with pytest.raises(HubError, match=r"revision 'v9'.*the cache holds: main"):
        zoo.from_pretrained("org/vitd", revision="v9")
    # cache_dir: another cache than HF_HUB_CACHE
    other = tmp_path / "other_cache"
    lay_out_in_hub_cache(tmp_path / "old", other, "org/elsewhere")
    torch.testing.assert_close(_outputs(zoo.from_pretrained("org/elsewhere", cache_dir=other), ex), _outputs(old, ex))
    with pytest.raises(HubError, match=f"not in the local cache at '{offline_cache}'"):
        zoo.from_pretrained("org/elsewhere")


def test_hf_hub_ids_take_a_revision_after_an_at_sign_as_in_timm(tmp_path, offline_cache):
    """create_model("hf-hub:org/repo@rev") (timm's form: the repository's architecture, its weights with
    pretrained=True), create_model(name, pretrained="hf-hub:org/repo@rev") and from_pretrained("org/repo@rev") load
    that revision through the snapshot lookup from_pretrained(revision=) uses (huggingface_hub rejected the '@')."""
    torch.manual_seed(0)
    old, new = zoo.create_model("vit_digits").eval(), zoo.create_model("vit_digits").eval()
    lay_out_in_hub_cache(save_pretrained(old, tmp_path / "old"), offline_cache, "org/vitd", commit="a" * 40)
    lay_out_in_hub_cache(save_pretrained(new, tmp_path / "new"), offline_cache, "org/vitd", commit="b" * 40)  # main
    ex = example_inputs(old, batch=2)
    loads = (lambda s: zoo.create_model(f"hf-hub:{s}", pretrained=True), lambda s: zoo.from_pretrained(s),
             lambda s: zoo.create_model("vit_digits", pretrained=f"hf-hub:{s}"), lambda s: zoo.from_pretrained(f"hf-hub:{s}"))
    for load in loads:
        for source, model in (("org/vitd@" + "a" * 40, old), ("org/vitd@main", new), ("org/vitd", new)):
            torch.testing.assert_close(_outputs(load(source).eval(), ex), _outputs(model, ex), rtol=0, atol=0)
    assert load_run("hf-hub:org/vitd@" + "a" * 40).model.config == old.config
    shape = zoo.create_model("hf-hub:org/vitd@" + "a" * 40, num_classes=3)  # the architecture, random weights
    assert type(shape) is type(old) and shape.num_classes == 3 and shape.config.dim == old.config.dim
    with pytest.raises(HubError, match=r"'org/vitd' at revision 'v9' \(the cache holds: main, a{40}, b{40}\) is not in"):
        zoo.create_model("hf-hub:org/vitd@v9", pretrained=True)
    with pytest.raises(HubError, match=r"two revisions: 'v1' \(after '@'\) and revision='v2'"):
        zoo.from_pretrained("org/vitd@v1", revision="v2")


def test_a_repo_the_hub_cannot_serve_is_named_with_the_cache_path(tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE and without a network, the message says the Hub was not reached (not that downloading
    is off) and names the cache folder it looked in."""
    import huggingface_hub.constants as hc
    from huggingface_hub.errors import LocalEntryNotFoundError

    import zoo.hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):  # what snapshot_download raises when the Hub cannot be reached
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub") \
            from ConnectionError("Name or service not known")

    monkeypatch.setattr("huggingface_hub.snapshot_download", unreachable)
    with pytest.raises(HubError) as e:
        zoo.hub.from_pretrained("org/nothere", cache_dir=tmp_path / "c")
    assert "the Hub could not be reached (ConnectionError" in str(e.value) and str(tmp_path / "c") in str(e.value)
    assert "HF_HUB_OFFLINE" not in str(e.value) and "HF_HUB_CACHE" not in str(e.value)


def test_folders_that_are_not_zoo_folders_say_what_they_are(tmp_path):
    """A transformers folder points to from_hf; a zoo folder with a damaged config.json names the file and the JSON
    error (both said "holds no checkpoint" / "it is a directory"); from_hf of a zoo folder points to from_pretrained."""
    import transformers as T

    T.BertModel(T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=20)).save_pretrained(tmp_path / "hf")
    for load in (lambda p: zoo.from_pretrained(p), lambda p: zoo.create_model("vit_mnist", pretrained=p)):
        with pytest.raises(ValueError, match=r"is a transformers folder \(its config.json has model_type 'bert'.*zoo.from_hf"):
            load(str(tmp_path / "hf"))
    folder = save_pretrained(zoo.create_model("vit_digits"), tmp_path / "zoo_vit")
    with pytest.raises(ValueError, match=r"is a zoo folder .*zoo.from_pretrained"):
        zoo.from_hf(folder)
    (folder / "config.json").write_text('{"model_type": "zoo", "zoo": {')
    for load in (lambda p: zoo.from_pretrained(p), lambda p: zoo.create_model("vit_digits", pretrained=p)):
        with pytest.raises(ValueError, match=r"zoo_vit/config.json' is not valid JSON \(JSONDecodeError: Expecting"):
            load(str(folder))
