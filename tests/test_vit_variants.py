"""ViT options (register tokens, QK-norm, LayerScale, no_embed_class), DeiT III, the DINOv2-register ViT,
forward_intermediates and features_only, each against timm (random weights, nothing downloaded)."""
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo.features import FeatureExtractor, feature_take_indices, tokens_to_nchw
from zoo.interop import from_timm
from zoo.interop.timm import zoo_config

REGISTERED_AS_TIMM = ["deit3_small_patch16_224", "deit3_base_patch16_224", "vit_small_patch14_reg4_dinov2"]


def assert_parity(out, ref, tol):
    assert out.shape == ref.shape, (out.shape, ref.shape)
    bound = tol * max(1.0, ref.abs().max().item())
    err = (out - ref).abs().max().item()
    assert err <= bound, f"max|diff| {err:.3g} > {bound:.3g}"


def perturb(model, seed=0):
    """Random weights everywhere, at scales that make every part count: LayerScale γ, class / register tokens
    (timm inits them at 1e-6) and norm affines of order one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "cls_token", "reg_token")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


@pytest.mark.parametrize("name", REGISTERED_AS_TIMM)
def test_parameter_count_equals_timm(name):
    with torch.device("meta"):
        ref = timm.create_model(name)
    assert zoo.model_info(name)["params"] == sum(p.numel() for p in ref.parameters())
    assert zoo_config(ref) == zoo.get_config(name)  # what from_timm reads off timm's model is the registered config


INTERMEDIATE_CALLS = [
    dict(),
    dict(indices=2, norm=True, output_fmt="NLC"),
    dict(indices=[0, -1], return_prefix_tokens=True, norm=True),
    dict(indices=[1], stop_early=True, intermediates_only=True),
]


def check_against_timm(ref, size=(32, 32), dtypes=((torch.float32, 1e-4), (torch.float64, 1e-9)), calls=INTERMEDIATE_CALLS):
    model = from_timm(ref)
    x = torch.randn(2, ref.patch_embed.proj.in_channels, *size)
    for dtype, tol in dtypes:
        ref, model, xd = ref.to(dtype), model.to(dtype), x.to(dtype)
        with torch.no_grad():
            assert_parity(model(xd), ref(xd), tol)
            for kw in calls:
                ours, theirs = model.forward_intermediates(xd, **kw), ref.forward_intermediates(xd, **kw)
                if not kw.get("intermediates_only"):
                    assert_parity(ours[0], theirs[0], tol)
                    assert_parity(ours[0], model.forward_features(xd), tol)
                    ours, theirs = ours[1], theirs[1]
                assert len(ours) == len(theirs) > 0
                for a, b in zip(ours, theirs):
                    for a_part, b_part in (zip(a, b) if isinstance(b, tuple) else [(a, b)]):
                        assert_parity(a_part, b_part, tol)
    return model


@pytest.mark.slow
def test_deit3_small_at_its_published_size():
    torch.manual_seed(0)
    ref = perturb(timm.create_model("deit3_small_patch16_224"))
    model = check_against_timm(ref, size=(224, 224), calls=INTERMEDIATE_CALLS[2:3])
    assert model.config == zoo.get_config("deit3_small_patch16_224")
    assert isinstance(model.encoder.blocks[0].ls1.gamma, torch.nn.Parameter)


ODD = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=2, num_classes=5)


@pytest.mark.parametrize("options", [
    dict(reg_tokens=3, qk_norm=True, init_values=0.1, global_pool="avg"),  # registers + QK-norm + LayerScale, avg pool
    dict(class_token=False, reg_tokens=2, qk_norm=True, global_pool="avg"),  # no class token
    dict(reg_tokens=2, no_embed_class=True, init_values=1e-6),  # DINOv2-reg style, class-token pooling
    dict(class_token=False, no_embed_class=True, global_pool="avg", fc_norm=False, init_values=1e-5),  # no prefix at all
], ids=["reg3-qknorm-ls-avg", "nocls-reg2-qknorm", "reg2-noembedcls-ls", "noprefix-noembedcls"])
def test_odd_configs_equal_timm(options):
    torch.manual_seed(0)
    ref = perturb(timm.create_model("vit_tiny_patch16_224", **ODD, **options))
    model = check_against_timm(ref)
    assert model.config.reg_tokens == options.get("reg_tokens", 0) and model.config.qk_norm == options.get("qk_norm", False)
    assert model.config.layer_scale == options.get("init_values")


def test_non_square_inputs_with_dynamic_img_size():
    """timm's dynamic_img_size resamples the positions (antialiased bicubic) for every input grid."""
    torch.manual_seed(0)
    ref = perturb(timm.create_model("vit_tiny_patch16_224", **ODD, reg_tokens=1, no_embed_class=True, init_values=0.5,
                                    dynamic_img_size=True))
    model = check_against_timm(ref, size=(48, 24), calls=INTERMEDIATE_CALLS[:3])
    assert model.config.pos_resize_antialias
    maps = model.float().forward_intermediates(torch.randn(1, 3, 48, 24), indices=1, intermediates_only=True)
    assert maps[0].shape == (1, 48, 6, 3)


def test_qk_norm_modules_carry_timm_names():
    model = zoo.create_model("vit_mnist_reg4")
    attn = model.encoder.blocks[0].attn
    assert isinstance(attn.q_norm, torch.nn.LayerNorm) and attn.q_norm.normalized_shape == (32,)
    assert "encoder.blocks.0.attn.k_norm.weight" in model.state_dict() and model.reg_token.shape == (1, 4, 128)
    plain = zoo.create_model("vit_mnist")
    assert not any("q_norm" in k for k in plain.state_dict())


def test_features_only_returns_the_maps_and_declares_them():
    torch.manual_seed(0)
    backbone = zoo.create_model("vit_mnist_reg4", features_only=True, out_indices=[1, -1]).eval()
    assert isinstance(backbone, FeatureExtractor)
    assert [f["module"] for f in backbone.feature_info] == ["encoder.blocks.1", "encoder.blocks.5"]
    assert backbone.channels() == [128, 128] and backbone.reduction() == [4, 4]
    x = torch.randn(2, 1, 28, 28)
    maps = backbone(x)
    assert [m.shape for m in maps] == [(2, 128, 7, 7)] * 2
    _, ref = backbone.model.forward_intermediates(x, indices=[1, 5])
    torch.testing.assert_close(maps, ref, rtol=0, atol=0)
    assert len(zoo.create_model("deit3_mnist", features_only=True).feature_info) == 6  # None: every block
    clip = zoo.create_model("clip_mnist", features_only=True, out_indices=1).eval()  # CLIP: its declared image tower's maps
    assert clip.model is clip.model.image_tower() and [m.shape[1:] for m in clip(x)] == [(clip.channels()[0], 7, 7)]
    cnn = zoo.create_model("timm_resnet18_mnist", features_only=True, out_indices=2).eval()  # the timm wrapper delegates
    assert [m.shape for m in cnn(x)] == [(2, 128, 4, 4), (2, 256, 2, 2)] and cnn.channels() == [128, 256]


def test_bad_indices_and_models_without_features_are_named():
    model = zoo.create_model("deit3_mnist")
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ValueError, match="feature index 6 is out of range for 6 features"):
        model.forward_intermediates(x, indices=[6])
    with pytest.raises(ValueError, match="last 7 features; the model has 6"):
        model.forward_intermediates(x, indices=7)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'.*got 'NHWC'"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="feature index -7"):
        zoo.create_model("deit3_mnist", features_only=True, out_indices=[0, -7])
    with pytest.raises(ValueError, match="needs features_only=True"):
        zoo.create_model("deit3_mnist", out_indices=[0])
    text = next(n for n in zoo.list_models() if zoo.get_config(n).__class__.__name__.startswith("Bert"))
    with pytest.raises(TypeError, match="has no forward_intermediates"), torch.device("meta"):
        zoo.create_model(text, features_only=True)


def test_feature_helpers_follow_timm():
    assert feature_take_indices(12, None) == (list(range(12)), 11)
    assert feature_take_indices(12, 3) == ([9, 10, 11], 11)
    assert feature_take_indices(12, [0, -1, 5]) == ([0, 11, 5], 11)
    for bad in (0, 13, [12], [-13], []):
        with pytest.raises(ValueError):
            feature_take_indices(12, bad)
    t = torch.arange(2 * 6 * 3.0).reshape(2, 6, 3)
    assert torch.equal(tokens_to_nchw(t, (2, 3))[1, :, 1, 2], t[1, 5])
    with pytest.raises(ValueError, match="split the prefix"):
        tokens_to_nchw(t, (2, 2))


def test_unsupported_timm_options_are_named():
    ref = timm.create_model("vit_tiny_patch16_224", **ODD, reg_tokens=1, global_pool="map")
    with pytest.raises(ValueError, match="global_pool='map'"):
        from_timm(ref)
    ref = timm.create_model("vit_tiny_patch16_224", **ODD, dynamic_img_pad=True)
    with pytest.raises(ValueError, match="dynamic_img_pad"):
        from_timm(ref)


def test_to_hf_refuses_what_transformers_vit_lacks(tmp_path):
    from zoo.interop.hf_vit import to_hf

    for name, needle in (("deit3_mnist", "no_embed_class=True, layer_scale=1e-06"), ("vit_small_patch14_reg4_dinov2", "reg_tokens=4")):
        with torch.device("meta"):
            model = zoo.create_model(name)
        with pytest.raises(ValueError, match=f"transformers' ViT has no {needle}"):
            to_hf(model, tmp_path)


@pytest.mark.parametrize("name, options", [
    ("vit_mnist_patch4", {"reg_tokens": 2, "qk_norm": True, "pos_embed": "rope"}),
    ("vit_mnist_patch4", {"norm_first": False}),
    ("deit3_mnist", {}),
    ("vit_tiny_patch16_224_distilled", {"img_size": 32, "depth": 2}),
    ("eva02_mnist", {"pool": "token", "class_token": True, "num_classes": 10}),
])
def test_class_token_forward_computes_the_last_block_for_the_head_tokens_only(name, options):
    """With a class-token head, forward's last block runs its output projection and feed-forward on the
    tokens the head reads only: the same logits and gradients as forward_head(forward_features(x)) (float64),
    while capture_attention still records every layer's full map."""
    torch.manual_seed(0)
    model = zoo.create_model(name, **options).double()
    x = model.example_inputs(batch=3).args[0].double()
    assert model.head_queries() == (2 if "distilled" in name else 1)
    with FlopCounterMode(display=False) as short:
        out = model.eval()(x)
    with FlopCounterMode(display=False) as full:
        expected = model.forward_head(model.forward_features(x))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    assert short.get_total_flops() < full.get_total_flops()

    model.train()
    losses = [model(x).square().sum(), model.forward_head(model.forward_features(x)).square().sum()]
    grads = [torch.autograd.grad(loss, list(model.parameters())) for loss in losses]
    for with_shortcut, every_row in zip(*grads):
        torch.testing.assert_close(with_shortcut, every_row, atol=1e-10, rtol=1e-8)

    with zoo.core.capture_attention(model.eval()) as maps:
        model(x)
    tokens = model.num_prefix + model.grid[0] * model.grid[1]
    last = maps[f"encoder.blocks.{len(model.encoder.blocks) - 1}.attn"]
    assert last.shape == (x.shape[0], model.encoder.blocks[-1].attn.num_heads, tokens, tokens)


def test_a_hook_on_the_last_block_or_the_final_norm_sees_every_row():
    """The shortcut is a hint to the stack: anything that watches the last block (a forward hook on it or inside
    it, or on the final norm) gets every row, and the logits stay the same."""
    torch.manual_seed(0)
    model = zoo.create_model("vit_mnist_patch4").double().eval()
    x = model.example_inputs(batch=2).args[0].double()
    plain = model(x)
    full = model.num_prefix + model.grid[0] * model.grid[1]
    for module in (model.encoder.blocks[-1], model.encoder.blocks[-1].attn.proj, model.encoder.norm):
        seen = []
        handle = module.register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
        torch.testing.assert_close(model(x), plain, atol=1e-12, rtol=1e-10)
        handle.remove()
        assert seen == [full]


def test_mean_pooling_reads_every_token():
    model = zoo.create_model("vit_mnist")
    assert model.head_queries() is None


@pytest.mark.parametrize("name,prefix", [("vit_mnist_reg4", 5), ("vit_mnist_distilled", 2), ("deit3_mnist", 0),
                                         ("cait_mnist", 0), ("eva02_mnist", 1)])
def test_weights_of_another_image_size_get_their_positions_resampled_as_timm(name, prefix, tmp_path):
    """timm's create_model(..., pretrained=True, img_size=N) resamples the stored position table (checkpoint_filter_fn:
    bicubic, antialiased, prefix rows kept); zoo refused with a shape mismatch of pos_embed."""
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    model = zoo.create_model(name).eval()
    model.save_pretrained(tmp_path / "w")
    for size in (40, 20):  # up and down from 28
        big = zoo.create_model(name, pretrained=str(tmp_path / "w"), img_size=size).eval()
        grid = (size // model.config.patch_size,) * 2
        want = resample_abs_pos_embed(model.pos_embed.detach(), grid, num_prefix_tokens=prefix)
        torch.testing.assert_close(big.pos_embed.detach(), want, rtol=0, atol=0)
        others = {k: v for k, v in model.state_dict().items() if k != "pos_embed"}
        torch.testing.assert_close({k: v for k, v in big.state_dict().items() if k in others}, others, rtol=0, atol=0)
        assert big(torch.randn(1, model.config.in_chans, size, size)).shape == (1, 10)


def test_a_model_loaded_at_another_size_equals_the_dynamic_resize_of_its_weights(tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model("vit_mnist", pos_resize_antialias=True).eval()  # the forward resizes as the loader does
    model.save_pretrained(tmp_path)
    x = torch.randn(2, 1, 44, 44)
    with torch.no_grad():
        torch.testing.assert_close(zoo.create_model("vit_mnist", pretrained=str(tmp_path), img_size=44).eval()(x), model(x))
    # a table that is not a square grid plus prefix rows is still named, not guessed
    state = {k: v for k, v in model.state_dict().items()}
    state["pos_embed"] = state["pos_embed"][:, :-3]
    with pytest.raises(Exception, match="pos_embed: checkpoint"):
        zoo.weights.load_state_dict_checked(zoo.create_model("vit_mnist", img_size=44), state)


def test_the_timm_wrapper_prunes_as_its_timm_model():
    """TimmClassifier delegates forward_intermediates to timm; prune_intermediate_layers was an AttributeError."""
    torch.manual_seed(0)
    model = zoo.create_model("timm_resnet18_mnist").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        before = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        take = model.prune_intermediate_layers([1, 2])
        after = model.forward_intermediates(x, indices=take, intermediates_only=True)
    assert take == [1, 2] and len(model.feature_info) == 3 and model.num_classes == 0
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out of range"):
        model.prune_intermediate_layers([7])
