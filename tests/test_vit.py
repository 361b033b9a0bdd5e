"""Forward contract of every registered ViT, plus parity with timm's VisionTransformer."""
import pytest
import timm
import torch

import zoo

# Full-size variants are checked on their config, at a reduced depth to keep the suite fast.
VITS = zoo.list_models(family="vit")


def small(name):
    cfg = zoo.get_config(name)
    return zoo.create_model(name, depth=min(cfg.depth, 2)).eval(), cfg


@pytest.mark.parametrize("name", VITS)
def test_forward_contract(name):
    model, cfg = small(name)
    x = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        feats = model.forward_features(x)
        n_tokens = (cfg.img_size // cfg.patch_size) ** 2 + (1 if cfg.class_token else 0)
        assert feats.shape == (2, n_tokens, cfg.dim)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, cfg.dim)
        logits = model(x)
        assert logits.shape == (2, cfg.num_classes)
        torch.testing.assert_close(model.forward_head(feats), logits)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, cfg.dim)


@pytest.mark.parametrize("name", ["vit_mnist", "vit_digits"])
def test_num_classes_zero_returns_pooled_features(name):
    cfg = zoo.get_config(name)
    model = zoo.create_model(name, num_classes=0).eval()
    x = torch.randn(3, cfg.in_chans, cfg.img_size, cfg.img_size)
    assert model(x).shape == (3, cfg.dim)


def test_other_image_sizes_interpolate_positions():
    model = zoo.create_model("vit_tiny_patch16_224", depth=1).eval()
    out = model.forward_features(torch.randn(1, 3, 160, 256))
    assert out.shape == (1, 1 + 10 * 16, 192)


def test_bad_image_size_and_channels_are_clear_errors():
    model = zoo.create_model("vit_mnist_patch4", depth=1)
    with pytest.raises(ValueError, match="not divisible by patch_size=4"):
        model(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 1, H, W\).*in_chans=3"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="not divisible"):
        zoo.create_model("vit_mnist_patch4", img_size=30)


def test_in_chans_configurable():
    model = zoo.create_model("vit_mnist_patch4", in_chans=3, depth=1)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)


def _copy_from_timm(zoo_model, timm_model):
    """Map timm's keys onto ours: conv patch weight -> linear patch weight; the rest is renaming."""
    sd = {}
    for k, v in timm_model.state_dict().items():
        k2 = k.replace("blocks.", "encoder.blocks.").replace("attn.proj", "attn.proj")
        if k == "patch_embed.proj.weight":
            v = v.reshape(v.shape[0], -1)
        if k.startswith("norm."):
            k2 = "encoder." + k
        sd[k2] = v
    zoo_model.load_state_dict(sd)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_parity_with_timm(pool):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                            num_classes=7, global_pool=pool).eval()
    ours = zoo.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=7, pool=pool).eval()
    _copy_from_timm(ours, ref)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.double()(x.double()), ref.double()(x.double()), atol=1e-10, rtol=0)
