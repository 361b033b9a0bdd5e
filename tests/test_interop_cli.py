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
    assert "load_converted" in capsys.readouterr().out
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
