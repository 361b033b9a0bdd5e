"""`zoo convert` end to end: ecosystem checkpoint on disk -> zoo file -> same outputs; zoo file -> transformers dir."""
import pytest
import timm
import torch
import transformers as T
from safetensors.torch import save_file

import zoo
from zoo.cli import main
from zoo.interop import load_converted




def run(*argv):
    with pytest.raises(SystemExit) as e:
        main(["convert", *map(str, argv)])
    return e.value.code


def test_convert_hf_dir_then_back_to_hf(tmp_path, capsys):
    torch.manual_seed(0)
    ref = T.BertForSequenceClassification(T.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=37, num_labels=3)).eval()
    ref.save_pretrained(tmp_path / "hf")
    assert run("--from-hf", tmp_path / "hf", "--out", tmp_path / "bert.safetensors") == 0
    assert "zoo.from_pretrained" in capsys.readouterr().out
    model = load_converted(tmp_path / "bert.safetensors")
    ids = torch.randint(1, 99, (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(model(ids, mask), expected, rtol=0, atol=1e-5)
        assert run("--to-hf", tmp_path / "bert.safetensors", "--out", tmp_path / "back") == 0
        again = T.BertForSequenceClassification.from_pretrained(tmp_path / "back").eval()
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, expected, rtol=0, atol=1e-5)


def test_convert_timm_checkpoint_names_the_registered_twin(tmp_path, capsys):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    save_file(ref.state_dict(), tmp_path / "timm.safetensors")
    assert run("--from-timm", tmp_path / "timm.safetensors", "--arch", "vit_tiny_patch16_224",
               "--out", tmp_path / "vit.safetensors") == 0
    assert "same config as zoo model 'vit_tiny_patch16_224'" in capsys.readouterr().out
    # the file is also an ordinary zoo weights file for the registered name
    model = zoo.create_model("vit_tiny_patch16_224", pretrained=str(tmp_path / "vit.safetensors")).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-4)


def test_convert_errors(tmp_path):
    with pytest.raises(SystemExit, match="needs --arch"):
        main(["convert", "--from-timm", "x.safetensors", "--out", str(tmp_path / "o.safetensors")])
    save_file({"w": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(SystemExit, match="no zoo metadata"):
        main(["convert", "--to-hf", str(tmp_path / "plain.safetensors"), "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit):  # argparse: a source is required
        main(["convert", "--out", "x"])


def test_converted_models_save_and_load_like_zoo_models(tmp_path):
    """from_hf / from_timm / load_converted models have a working save_pretrained, and a file `zoo convert` wrote
    loads through from_pretrained and zoo export's loader, with identical outputs (sizes no registered name has)."""
    from zoo.export import load_model
    from zoo.interop import from_hf, from_timm

    torch.manual_seed(0)
    ref = T.BertForSequenceClassification(T.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=37, num_labels=3)).eval()
    ref.save_pretrained(tmp_path / "hf")
    ids = torch.randint(1, 99, (2, 8))
    bert = from_hf(tmp_path / "hf")
    with torch.no_grad():
        expected = bert(ids)
        again = zoo.from_pretrained(bert.save_pretrained(tmp_path / "sp"))
        assert type(again) is type(bert) and again.config == bert.config
        torch.testing.assert_close(again(ids), expected, rtol=0, atol=0)
        assert run("--from-hf", tmp_path / "hf", "--out", tmp_path / "bert.safetensors") == 0
        for loaded in (zoo.from_pretrained(tmp_path / "bert.safetensors"), load_model(str(tmp_path / "bert.safetensors")),
                       zoo.from_pretrained(load_converted(tmp_path / "bert.safetensors").save_pretrained(tmp_path / "lc"))):
            torch.testing.assert_close(loaded(ids), expected, rtol=0, atol=0)
    whole = (tmp_path / "bert.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) - 100])
    with pytest.raises(ValueError, match="cut.safetensors.*it is truncated"):
        load_converted(tmp_path / "cut.safetensors")
    # zoo weights with a zoo record (zoo.runs.save_run) convert back without --model
    from zoo.runs import save_run

    assert run("--to-hf", save_run(again, tmp_path / "run.safetensors"), "--out", tmp_path / "back") == 0
    assert T.BertForSequenceClassification.from_pretrained(tmp_path / "back").config.hidden_size == 32

    # a timm Swin: its tuple fields (depths, num_heads) come back as tuples from every path
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=16,
                            depths=(1, 1), num_heads=(1, 2), num_classes=5).eval()
    swin = from_timm(ref)
    save_file(ref.state_dict(), tmp_path / "timm.safetensors")
    assert run("--from-timm", tmp_path / "timm.safetensors", "--arch", "swin_tiny_patch4_window7_224",
               "--timm-arg", "img_size=56", "--timm-arg", "embed_dim=16", "--timm-arg", "depths=(1,1)",
               "--timm-arg", "num_heads=(1,2)", "--timm-arg", "num_classes=5", "--out", tmp_path / "swin.safetensors") == 0
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        for loaded in (zoo.from_pretrained(swin.save_pretrained(tmp_path / "swin_sp")), load_converted(tmp_path / "swin.safetensors"),
                       zoo.from_pretrained(tmp_path / "swin.safetensors")):
            assert loaded.config == swin.config
            torch.testing.assert_close(loaded(x), swin(x), rtol=0, atol=0)


def test_convert_names_the_wrong_kind_of_input_or_output(tmp_path):
    from zoo.interop.cli import main as convert
    from zoo.runs import model_record

    folder = zoo.create_model("vit_digits").save_pretrained(tmp_path / "zoo_vit")
    with pytest.raises(ValueError, match="is a zoo folder .*zoo.from_pretrained"):  # was KeyError: 'zoo'
        convert(["--from-hf", str(folder), "--out", str(tmp_path / "x.safetensors")])
    (tmp_path / "exdir").mkdir()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="is a folder that holds no zoo model"):  # was "No such device (os error 19)"
        convert(["--to-hf", str(tmp_path / "empty"), "--out", str(tmp_path / "back")])
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(SystemExit, match="is a transformers folder"):  # it is converted already
        convert(["--to-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")])
    # a zoo fit checkpoint names its model: no --model needed (was "header too large")
    bert = zoo.create_model("bert_tiny", head="cls", depth=1, dim=32, num_heads=2, vocab_size=100)
    torch.save({"state_dict": {f"model.{k}": v for k, v in bert.state_dict().items()}, "zoo": model_record(bert)},
               tmp_path / "last.ckpt")
    assert convert(["--to-hf", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "bert_hf")]) == 0
    assert (tmp_path / "bert_hf" / "config.json").is_file()
    # --out of --from-*: one .safetensors file, never a folder ("outdir/" was written as a file named outdir)
    T.BertModel(T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=20)).save_pretrained(tmp_path / "hf")
    for out in (tmp_path / "exdir", f"{tmp_path / 'outdir'}/"):
        with pytest.raises(SystemExit, match="a converted model is one .safetensors file"):
            convert(["--from-hf", str(tmp_path / "hf"), "--out", str(out)])
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(ValueError, match="d.safetensors' is a folder; the output is a file"):
        convert(["--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "d.safetensors")])
    assert not (tmp_path / "outdir").exists() and not any((tmp_path / "d.safetensors").iterdir())


def test_convert_gpt2_names_the_registered_twin_whatever_its_sampling_defaults(tmp_path, capsys):
    """A converted GPT-2 carries transformers' sampling defaults (top_k=50) in its config; the registry match compared
    whole configs, so `zoo convert` stopped naming the registered model of the same sizes."""
    cfg = zoo.create_model("gpt2_tiny").config
    T.GPT2LMHeadModel(T.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_positions, n_embd=cfg.dim,
                                   n_layer=cfg.depth, n_head=cfg.num_heads, bos_token_id=cfg.bos_token_id,
                                   eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, resid_pdrop=cfg.dropout,
                                   embd_pdrop=cfg.dropout, attn_pdrop=cfg.attn_dropout)).save_pretrained(tmp_path / "hf")
    assert run("--from-hf", tmp_path / "hf", "--out", tmp_path / "gpt.safetensors") == 0
    assert "same config as zoo model 'gpt2_tiny'" in capsys.readouterr().out
    assert load_converted(tmp_path / "gpt.safetensors").config.sampling["top_k"] == 50
