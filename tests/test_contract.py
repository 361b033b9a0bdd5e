"""The interface every registered model promises (timm-style contract tests over the registry).

Every model is built on the meta device (no memory, any size) and checked for the shared interface;
models under 6M parameters also run a real forward pass on inputs made from their own config."""
import pytest
import torch

import zoo
from zoo.registry import count_parameters

ALL = zoo.list_models()
SMALL = [n for n in ALL if zoo.model_info(n)["params"] < 6_000_000]
IMAGE_FAMILIES = {"vit", "deit", "timm"}


def build(name: str, device: str = "cpu"):
    with torch.device(device):
        return zoo.create_model(name), zoo.get_config(name)


@pytest.mark.parametrize("name", ALL)
def test_interface_of_every_registered_model(name):
    model, cfg = build(name, "meta")
    info = zoo.model_info(name)
    assert model.config == cfg and info["params"] == count_parameters(model)
    assert callable(getattr(model, "forward_features", None)), f"{name} has no forward_features"
    assert info["paper"] and info["description"], f"{name} needs a paper and a description in the registry"
    if hasattr(model, "reset_classifier"):
        assert callable(getattr(model, "forward_head", None)) and hasattr(model, "num_classes")
    if info["family"] in ("transformer", "t5", "recurrent", "captioner"):
        assert callable(model.encode) and callable(model.decode) and callable(model.generate)


def _images(cfg, b=2):
    return torch.randn(b, cfg.in_chans, cfg.img_size, cfg.img_size)


def _ids(vocab, b=2, n=6):
    return torch.randint(4, vocab, (b, n))


@pytest.mark.parametrize("name", SMALL)
def test_forward_of_every_small_model(name):
    torch.manual_seed(0)
    model, cfg = build(name)
    model.eval()
    family = zoo.model_info(name)["family"]
    with torch.no_grad():
        if family in IMAGE_FAMILIES:
            x = _images(cfg)
            out = model(x)
            assert out.shape == (2, cfg.num_classes)
            if hasattr(model, "forward_head"):
                torch.testing.assert_close(model.forward_head(model.forward_features(x)), out)
        elif family == "bert":
            out = model(_ids(cfg.vocab_size), attention_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2]))
            assert out.shape[:2] == (2, 6) and torch.isfinite(out).all()
        elif family in ("transformer", "recurrent"):
            src, tgt = _ids(cfg.vocab_size), _ids(cfg.vocab_size, n=4)
            assert model(src, tgt).shape == (2, 4, cfg.vocab_size)
            gen = model.generate(src, max_new_tokens=3)
            assert gen.shape[0] == 2 and gen.shape[1] <= 4
        elif family == "captioner":
            images, tgt = _images(cfg), _ids(cfg.vocab_size, n=4)
            assert model(images, tgt).shape == (2, 4, cfg.vocab_size)
            assert model.generate(images, max_new_tokens=3).shape[0] == 2
        elif family == "clip":
            ids = _ids(cfg.vocab_size, n=min(6, cfg.context_length))
            logits = model(_images(cfg), ids)
            assert logits.shape == (2, 2) and torch.isfinite(logits).all()
        else:
            pytest.fail(f"no contract input for family {family!r}: extend tests/test_contract.py")
