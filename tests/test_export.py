"""ONNX export with dynamic axes, checked in onnxruntime against PyTorch at two batch sizes / lengths."""
import pytest
import torch

import zoo
from zoo.export import check_onnx, example_inputs, export_onnx, export_torch, load_model

pytest.importorskip("onnxruntime")

TINY = {
    "vit_mnist": {"depth": 1, "dim": 32, "num_heads": 2},
    "bert_tiny": {"head": "cls", "depth": 1, "dim": 32, "num_heads": 2, "vocab_size": 100},
    "transformer_tiny": {"num_encoder_layers": 1, "num_decoder_layers": 1, "d_model": 32, "num_heads": 2,
                         "dim_feedforward": 64, "vocab_size": 100},
}


@pytest.mark.parametrize("name", list(TINY))
def test_onnx_matches_pytorch_at_two_shapes(name, tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model(name, **TINY[name]).eval()
    path = tmp_path / f"{name}.onnx"
    assert export_onnx(model, example_inputs(model, batch=2, length=8), path) == "dynamo"
    for batch, length in ((3, 11), (1, 5)):  # neither is the traced shape: the axes are dynamic
        ex = example_inputs(model, batch, length, seed=batch)
        assert check_onnx(model, path, ex) <= 1e-4


def test_torch_export_program_runs_at_another_batch():
    model = zoo.create_model("bert_tiny", **TINY["bert_tiny"]).eval()
    program = export_torch(model, example_inputs(model, 2, 8))
    ex = example_inputs(model, 4, 13, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*ex.args), model(ex.args[0], attention_mask=ex.args[1]))


def test_load_model_errors_name_the_fix(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"pass MODEL@"):
        load_model(str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="unknown model"):
        load_model("vit_mnits")


def test_checkpoint_overrides_restore_the_task_head_and_drop_task_keys():
    from zoo.export import checkpoint_overrides

    hp = {"model": "bert_tiny", "_class_path": "zoo.tasks.text.SequenceClassification", "model_kwargs": {"max_positions": 64},
          "data_overrides": {"vocab_size": 50, "pad_token_id": 0, "num_classes": 3, "mask_token_id": 4}}
    assert checkpoint_overrides(hp) == {"vocab_size": 50, "pad_token_id": 0, "num_classes": 3, "max_positions": 64, "head": "cls"}
    assert checkpoint_overrides(hp, {"head": "none"})["head"] == "none"  # the caller wins
