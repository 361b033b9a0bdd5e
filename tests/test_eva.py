"""EVA-02 and RoPE-ViT: the core's 2-D rotary table, from_timm parity (logits and forward_intermediates,
float32 and float64), parameter counts, refusals and bad inputs. Random weights, nothing downloaded."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import zoo
from zoo.core import RotaryEmbedding2D, capture_attention
from zoo.interop import from_timm
from zoo.registry import count_parameters

FP32, FP64 = 1e-4, 1e-9


def assert_parity(out, ref, tol):
    assert out.shape == ref.shape, (out.shape, ref.shape)
    bound = tol * max(1.0, ref.abs().max().item())
    err = (out - ref).abs().max().item()
    assert err <= bound, f"max|diff| {err:.3g} > {bound:.3g}"


def timm_model(name, seed=0, **kw):
    """A timm model with every parameter perturbed (biases and the 0.001-scaled head are otherwise ~0)."""
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def images(m, batch=2, seed=1):
    return torch.randn(batch, 3, *m.patch_embed.img_size, generator=torch.Generator().manual_seed(seed))


# -- the rotary table ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", [
    ("eva02_tiny_patch14_224", dict(depth=1)),                                  # ij, ref 16x16 (identity)
    ("eva02_tiny_patch14_224", dict(depth=1, img_size=336)),                    # ij, ref 16x16 on a 24x24 grid
    ("eva02_tiny_patch14_224", dict(depth=1, img_size=(56, 98))),               # ij, non-square 4x7 grid
    ("vit_small_patch16_rope_224", dict(depth=1, img_size=(48, 80))),           # xy, temperature 100, 3x5 grid
])
def test_rotary_table_equals_timm_buffers(name, kw):
    ref = timm.create_model(name, pretrained=False, **kw)
    model = from_timm(ref)
    rope = model.rope
    assert rope.grid == tuple(ref.patch_embed.grid_size)
    assert torch.equal(rope.bands(), ref.rope.bands)
    table = rope.table()
    assert table.dtype == torch.float32
    assert torch.equal(table, ref.rope.pos_embed)


def test_rotary_leaves_prefix_tokens_and_keeps_float32_angles():
    rope = RotaryEmbedding2D(8, (3, 4), temperature=100.0, indexing="xy", num_prefix=2)
    x = torch.randn(2, 3, 2 + 12, 8, dtype=torch.float64)
    out = rope(x)
    assert out.dtype == torch.float64
    assert torch.equal(out[:, :, :2], x[:, :, :2])
    # a rotation: every channel pair keeps its norm
    pairs = lambda t: t[:, :, 2:].reshape(2, 3, 12, 4, 2).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pairs(out), pairs(x))
    # 'xy': the first half of each head rotates with the column, the second with the row
    angles = rope.angles()
    cols = torch.arange(4.0).repeat(3)
    rows = torch.arange(3.0).repeat_interleave(4)
    torch.testing.assert_close(angles[:, :2], cols[:, None] * rope.bands())
    torch.testing.assert_close(angles[:, 2:], rows[:, None] * rope.bands())


def test_rotary_scores_depend_on_offsets_only():
    rope = RotaryEmbedding2D(16, (5, 5))
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
    rq, rk = rope(q.expand(1, 1, 25, 16)), rope(k.expand(1, 1, 25, 16))
    scores = (rq[0, 0] @ rk[0, 0].T).reshape(5, 5, 5, 5)  # (yq, xq, yk, xk)
    torch.testing.assert_close(scores[0, 0, 1, 2], scores[2, 1, 3, 3])  # offset (+1, +2) at two places
    torch.testing.assert_close(scores[1, 1, 1, 1], scores[4, 3, 4, 3])  # offset 0


def test_rotary_bad_arguments():
    with pytest.raises(ValueError, match="divisible by 4"):
        RotaryEmbedding2D(6, (2, 2))
    with pytest.raises(ValueError, match="'ij'"):
        RotaryEmbedding2D(8, (2, 2), indexing="yx")
    rope = RotaryEmbedding2D(8, (2, 2), num_prefix=1)
    with pytest.raises(ValueError, match="1 prefix \\+ 4 patch tokens .* 6 tokens"):
        rope(torch.randn(1, 1, 6, 8))
    with pytest.raises(ValueError, match="offset"):
        rope(torch.randn(1, 1, 5, 8), offset=3)


# -- parity with timm ---------------------------------------------------------------------------------

CONFIGS = {
    "eva02_tiny_published": ("eva02_tiny_patch14_224", {}),
    "eva02_odd": ("eva02_tiny_patch14_224", dict(img_size=(56, 42), embed_dim=128, depth=3, num_heads=4, num_classes=7)),
    "eva02_unfused_token": ("eva02_tiny_patch14_224", dict(img_size=(42, 70), embed_dim=96, depth=2, num_heads=2,
                                                            qkv_fused=False, global_pool="token", num_classes=3)),
    "eva02_base_style": ("eva02_tiny_patch14_224", dict(img_size=(70, 56), embed_dim=96, depth=2, num_heads=3,
                                                         qkv_fused=False, scale_mlp=True, num_classes=4)),
    "eva02_ref_rescale": ("eva02_tiny_patch14_224", dict(img_size=84, embed_dim=64, depth=2, num_heads=1,
                                                          ref_feat_shape=(8, 5), num_classes=4)),
    "eva02_qk_norm": ("eva02_tiny_patch14_224", dict(img_size=56, embed_dim=64, depth=2, num_heads=2, qk_norm=True,
                                                      num_classes=3)),
    "rope_vit_xy_t100": ("vit_small_patch16_rope_224", dict(img_size=(48, 64), embed_dim=96, depth=3, num_heads=3,
                                                             num_classes=5)),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_from_timm_logits_and_features(case):
    name, kw = CONFIGS[case]
    ref = timm_model(name, **kw)
    model = from_timm(ref)
    assert count_parameters(model) == sum(p.numel() for p in ref.parameters())
    x = images(ref)
    for dtype, tol in ((torch.float32, FP32), (torch.float64, FP64)):
        ref, model = ref.to(dtype), model.to(dtype)
        with torch.no_grad():
            assert_parity(model(x.to(dtype)), ref(x.to(dtype)), tol)
            assert_parity(model.forward_head(model.forward_features(x.to(dtype)), pre_logits=True),
                          ref.forward_head(ref.forward_features(x.to(dtype)), pre_logits=True), tol)


@pytest.mark.parametrize("case", ["eva02_tiny_published", "eva02_odd", "rope_vit_xy_t100"])
def test_forward_intermediates_equal_timm(case):
    name, kw = CONFIGS[case]
    ref = timm_model(name, **kw)
    model = from_timm(ref)
    depth = len(ref.blocks)
    x = images(ref, batch=1)
    calls = [dict(), dict(indices=2), dict(indices=[0, -1], output_fmt="NLC"), dict(indices=[1], norm=True),
             dict(indices=[0, depth - 1], return_prefix_tokens=True)]
    for dtype, tol in ((torch.float32, FP32), (torch.float64, FP64)):
        ref, model, xd = ref.to(dtype), model.to(dtype), x.to(dtype)
        with torch.no_grad():
            for kwargs in calls:
                final_ref, maps_ref = ref.forward_intermediates(xd, **kwargs)
                final, maps = model.forward_intermediates(xd, **kwargs)
                assert_parity(final, final_ref, tol)
                assert len(maps) == len(maps_ref)
                for a, b in zip(maps, maps_ref):
                    if isinstance(b, tuple):
                        assert_parity(a[0], b[0], tol)
                        assert_parity(a[1], b[1], tol)
                    else:
                        assert_parity(a, b, tol)
            only_ref = ref.forward_intermediates(xd, indices=[1], stop_early=True, intermediates_only=True)
            only = model.forward_intermediates(xd, indices=[1], stop_early=True, intermediates_only=True)
            assert_parity(only[0], only_ref[0], tol)
    assert maps[0][0].shape[-2:] == tuple(ref.patch_embed.grid_size)


def test_from_timm_checkpoint_file(tmp_path):
    ref = timm_model("eva02_tiny_patch14_224", depth=2, num_classes=6)
    path = tmp_path / "eva.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = from_timm(path, "eva02_tiny_patch14_224", depth=2)
    x = images(ref, batch=1)
    with torch.no_grad():
        assert_parity(model(x), ref(x), FP32)


# -- the registered models ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "eva02_small_patch14_224", "eva02_base_patch14_224",
                                  "vit_small_patch16_rope_224"])
def test_parameter_counts_equal_timm(name):
    with torch.device("meta"):
        ours = count_parameters(zoo.create_model(name))
        theirs = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
    assert ours == theirs
    assert zoo.model_info(name)["params"] == theirs


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "eva02_base_patch14_224", "vit_small_patch16_rope_224"])
def test_registered_config_is_what_from_timm_reads(name):
    with torch.device("meta"):
        ref = timm.create_model(name, pretrained=False)
    from zoo.interop.timm_eva import zoo_config

    assert zoo_config(ref) == zoo.get_config(name)


def test_timm_init_statistics():
    torch.manual_seed(0)
    model = zoo.create_model("eva02_mnist")
    blocks = model.encoder.blocks
    # fc2 / proj weights of block l are trunc_normal(0.02) / sqrt(2(l+1)); the head is scaled by 0.001
    ratio = blocks[0].mlp.fc2.weight.std() / blocks[-1].mlp.fc2.weight.std()
    assert abs(ratio.item() / (len(blocks) ** 0.5) - 1) < 0.1
    assert abs(model.head.weight.std().item() / (0.02 * 0.001) - 1) < 0.15
    assert torch.equal(blocks[0].attn.qkv.q_bias, torch.zeros_like(blocks[0].attn.qkv.q_bias))


def test_mnist_variant_trains_a_step_with_checkpointing():
    model = zoo.create_model("eva02_mnist")
    assert count_parameters(model) < 6_000_000
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    model.eval()
    with torch.no_grad():
        ref = model(x)
    assert ref.shape == (4, 10)
    model.train()
    assert model.set_grad_checkpointing(True) == 1
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref)
    feats = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(4, 128, 7, 7)] * 2
    assert [f["module"] for f in model.feature_info][-1] == "encoder.blocks.5"


def test_attention_capture_sees_eva_attention():
    model = zoo.create_model("eva02_mnist").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        with capture_attention(model) as maps:
            out = model(x)
    assert sorted(maps) == [f"encoder.blocks.{i}.attn" for i in range(6)]
    for w in maps.values():
        assert w.shape == (2, 4, 50, 50)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 50), atol=1e-5, rtol=0)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # the math path equals SDPA


# -- bad input ------------------------------------------------------------------------------------------

def test_wrong_image_size_and_channels():
    model = zoo.create_model("eva02_mnist")
    with pytest.raises(ValueError, match="image size 32x32 differs from the model's img_size 28x28.*img_size=\\(32, 32\\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by patch_size=4"):
        model(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match="in_chans"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(torch.randn(1, 1, 28, 28), output_fmt="NHWC")
    with pytest.raises(ValueError, match="feature index 6 is out of range"):
        model.forward_intermediates(torch.randn(1, 1, 28, 28), indices=[6])


def test_bad_configs():
    with pytest.raises(ValueError, match="not a multiple of patch_size=4"):
        zoo.create_model("eva02_mnist", img_size=30)
    with pytest.raises(ValueError, match="divisible by 4"):
        zoo.create_model("eva02_mnist", dim=120)  # head_dim 30
    with pytest.raises(ValueError, match="pool must be"):
        zoo.create_model("eva02_mnist", pool="max")


@pytest.mark.parametrize("kw,named", [
    (dict(scale_attn_inner=True), "scale_attn_inner"),
    (dict(num_reg_tokens=2), "register tokens"),
    (dict(rope_type="mixed", use_abs_pos_emb=False, attn_type="rope"), "rope_type='mixed'"),
    (dict(global_pool="map"), "global_pool='map'"),
    (dict(dynamic_img_size=True), "dynamic_img_size"),
    (dict(rope_rotate_half=True), "rope_rotate_half"),
])
def test_unconverted_timm_options_are_named(kw, named):
    ref = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=1, embed_dim=64, num_heads=1, **kw)
    with pytest.raises(ValueError, match=named):
        from_timm(ref)


def test_the_data_config_of_weights_loaded_at_another_size_is_the_models(tmp_path):
    """Weights whose record reads 28px digits, loaded with img_size=56: resolve_data_config said (1, 28, 28) and its
    transform fed EVA images it refuses ("image size 28x28 differs from the model's img_size 56x56"); the model as
    built decides the size, the record the normalisation."""
    from PIL import Image

    from zoo.hub import save_pretrained

    torch.manual_seed(0)
    image = {"size": 28, "in_chans": 1, "mean": 0.1307, "std": 0.3081}
    save_pretrained(zoo.create_model("eva02_mnist"), tmp_path, meta={"image": image})
    assert zoo.resolve_data_config(zoo.create_model("eva02_mnist", pretrained=str(tmp_path)))["input_size"] == (1, 28, 28)
    model = zoo.create_model("eva02_mnist", pretrained=str(tmp_path), img_size=56).eval()
    config = zoo.resolve_data_config(model)
    assert config["input_size"] == (1, 56, 56) and config["mean"] == (0.1307,) and config["std"] == (0.3081,)
    assert model.pretrained_cfg["input_size"] == (1, 56, 56)
    x = zoo.create_transform(config)(Image.new("L", (28, 28), 128))
    assert model(x[None]).shape == (1, 10)
    model.pretrained_cfg = {"image": {"size": 28, "in_chans": 3, "mean": (0.2, 0.4, 0.6), "std": 0.5}}  # RGB record
    assert zoo.resolve_data_config(model)["mean"] == (pytest.approx(0.4),)  # one value per channel of the model
