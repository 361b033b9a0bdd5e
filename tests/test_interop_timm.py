"""timm / torchvision / torch.nn -> zoo: outputs against the reference (random weights, nothing downloaded)."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from zoo.interop import from_timm
from zoo.weights import StateDictMismatch, load_state_dict_checked




def assert_parity(out, ref, tol=1e-4):
    assert out.shape == ref.shape, (out.shape, ref.shape)
    bound = tol * max(1.0, ref.abs().max().item())
    err = (out - ref).abs().max().item()
    assert err <= bound, f"max|diff| {err:.3g} > {bound:.3g}"


TINY = dict(img_size=32, depth=2, num_classes=7)


def check(ref, model, dtypes=((torch.float32, 1e-4), (torch.float64, 1e-9)), size=32):
    x = torch.randn(2, 3, size, size)
    for dtype, tol in dtypes:
        ref, model = ref.to(dtype), model.to(dtype)
        with torch.no_grad():
            feats = ref.forward_features(x.to(dtype))
            if isinstance(ref.norm, torch.nn.Identity) and not isinstance(ref.fc_norm, torch.nn.Identity):
                feats = ref.norm(feats)  # with fc_norm, timm has no final norm: the same tokens either way
            assert_parity(model.forward_features(x.to(dtype)), feats, tol)
            assert_parity(model(x.to(dtype)), ref(x.to(dtype)), tol)


@pytest.mark.parametrize("pool,fc_norm", [("token", None), ("avg", None), ("avg", False), ("token", True)])
def test_pooling_variants(pool, fc_norm):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool=pool, fc_norm=fc_norm, **TINY).eval()
    model = from_timm(ref)
    use_fc_norm = pool == "avg" if fc_norm is None else fc_norm
    assert model.config.pool == pool and isinstance(model.fc_norm, torch.nn.LayerNorm) == use_fc_norm and model.config.norm_eps == 1e-6
    check(ref, model)


def test_clip_style_pre_norm_layerscale_and_no_head():
    """pre_norm (ln_pre, bias-free patch embedding), eps 1e-5, LayerScale (ls1/ls2.gamma), num_classes=0."""
    torch.manual_seed(0)
    ref = timm.create_model("vit_base_patch32_clip_224", pretrained=False, img_size=64, depth=2, embed_dim=64,
                            num_heads=4, num_classes=0, init_values=0.3).eval()
    model = from_timm(ref)
    assert model.config.pre_norm and model.config.norm_eps == 1e-5 and model.num_classes == 0
    check(ref, model, size=64)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_checkpoint_file_plus_arch(fmt, tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", **TINY).eval()
    path = tmp_path / f"ckpt.{fmt}"
    if fmt == "safetensors":
        save_file(ref.state_dict(), path)
    else:
        torch.save({"state_dict": ref.state_dict()}, path)
    # num_classes and the pooling are read off the weights; the size overrides go to timm.create_model
    model = from_timm(path, arch="vit_tiny_patch16_224", img_size=32, depth=2)
    assert model.num_classes == 7 and model.config.pool == "avg"
    check(ref, model, dtypes=((torch.float32, 1e-4),))


def test_full_size_timm_vit_small():
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    model = from_timm(ref)
    check(ref, model, dtypes=((torch.float32, 1e-4),), size=224)


@pytest.mark.parametrize("class_token", [True, False])
def test_vit_without_positions(class_token):
    """timm's pos_embed='none' maps to the zoo switch pos_embed='none' (no table in the state dict)."""
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, pos_embed="none", class_token=class_token,
                            global_pool="token" if class_token else "avg", **TINY).eval()
    model = from_timm(ref)
    assert model.config.pos_embed == "none" and "pos_embed" not in model.state_dict()
    check(ref, model)


def test_unsupported_options_and_bad_files_are_named(tmp_path):
    pooled = timm.create_model("vit_tiny_patch16_224", pretrained=False, reg_tokens=4, global_pool="map", **TINY)
    with pytest.raises(ValueError, match="global_pool='map'"):
        from_timm(pooled)
    with pytest.raises(ValueError, match="arch="):
        from_timm(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        from_timm(tmp_path / "x.safetensors", arch="vit_tiny_patch16_224")
    save_file({"head.weight": torch.zeros(3, 192), "foo": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(StateDictMismatch, match=r"(?s)missing \(\d+\): blocks.0.*unexpected \(1\): foo"):
        from_timm(tmp_path / "bad.safetensors", arch="vit_tiny_patch16_224", img_size=32, depth=2)


def test_converted_weights_reload_through_the_checked_loader():
    torch.manual_seed(0)
    model = from_timm(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY))
    sd = model.state_dict()
    sd["encoder.blocks.0.attn.qkv.weight"] = sd["encoder.blocks.0.attn.qkv.weight"][:, :5]
    sd.pop("encoder.norm.weight")
    with pytest.raises(StateDictMismatch, match=r"(?s)missing \(1\): encoder.norm.weight.*qkv.weight: checkpoint \(576, 5\)"):
        load_state_dict_checked(model, sd)


def test_deit3_checkpoint_file_plus_arch(tmp_path):
    """DeiT III (no_embed_class + LayerScale) and register tokens + QK-norm through a timm state-dict file."""
    torch.manual_seed(0)
    for arch, kw in (("deit3_small_patch16_224", {}), ("vit_small_patch14_reg4_dinov2", {"qk_norm": True, "num_classes": 3})):
        ref = timm.create_model(arch, pretrained=False, img_size=32, patch_size=8, depth=2, **kw).eval()
        with torch.no_grad():
            for blk in ref.blocks:  # LayerScale at 1e-6 would hide the branches
                blk.ls1.gamma.normal_()
                blk.ls2.gamma.normal_()
        save_file(ref.state_dict(), tmp_path / "ckpt.safetensors")
        model = from_timm(tmp_path / "ckpt.safetensors", arch=arch, img_size=32, patch_size=8, depth=2, **kw)
        assert model.config.no_embed_class and model.config.layer_scale is not None
        assert model.config.reg_tokens == (4 if "reg4" in arch else 0) and model.config.qk_norm == bool(kw)
        check(ref, model)


def _layer_sizes(model, coarse):
    """Layer-wise lr decay as timm computes it: {layer id: parameters in it}, in order."""
    from collections import Counter

    from timm.models._manipulate import group_parameters

    layers = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
    sizes = Counter()
    for name, p in model.named_parameters():
        sizes[layers[name]] += p.numel()
    return dict(sorted(sizes.items()))


@pytest.mark.parametrize("coarse", [False, True])
@pytest.mark.parametrize("build", [
    lambda: timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                                             num_classes=5, reg_tokens=2, no_embed_class=True,
                                                             global_pool="avg", pre_norm=True, init_values=1e-5),
    lambda: timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                                             num_classes=5),
    lambda: timm.models.eva.Eva(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5,
                                use_rot_pos_emb=True, ref_feat_shape=(4, 4), global_pool="token"),
    lambda: timm.models.cait.Cait(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5,
                                  depth_token_only=2),
    lambda: timm.models.swin_transformer.SwinTransformer(img_size=64, patch_size=4, window_size=4, embed_dim=16,
                                                         depths=(1, 1, 2), num_heads=(1, 2, 4), num_classes=5),
], ids=["vit_reg_avg", "vit", "eva", "cait", "swin"])
def test_layer_decay_groups_are_timms(build, coarse):
    """timm's layer-wise lr decay (create_optimizer_v2(model, layer_decay=...)) reads model.group_matcher(); without
    one it put every parameter of a zoo model in one group (a warning, no decay). The converted model's groups hold
    the same parameters as the timm model's, layer by layer."""
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    ref = build().eval()
    model = from_timm(ref)
    assert _layer_sizes(model, coarse) == _layer_sizes(ref, coarse)
    scales = lambda m: sorted(  # noqa: E731
        (g["lr_scale"], sum(p.numel() for p in g["params"])) for g in create_optimizer_v2(m, "adamw", layer_decay=0.5).param_groups)
    assert scales(model) == scales(ref) and len({s for s, _ in scales(model)}) > 2


def test_layer_decay_puts_the_distillation_token_with_the_embedding():
    import zoo
    from timm.models._manipulate import group_parameters

    model = zoo.create_model("vit_mnist_distilled", depth=2, pool="token")
    layers = group_parameters(model, model.group_matcher(), reverse=True)
    assert layers["dist_token"] == layers["cls_token"] == layers["pos_embed"] == 0
    assert layers["encoder.blocks.1.mlp.fc2.weight"] == layers["encoder.norm.weight"] == 2
    assert layers["head.weight"] == layers["head_dist.weight"] == 3


@pytest.mark.parametrize("indices,prune_norm", [(1, False), ([0, 1], True), (2, False), (None, True)])
@pytest.mark.parametrize("build", [
    lambda: timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2,
                                                             num_classes=5, reg_tokens=1),
    lambda: timm.models.eva.Eva(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=5,
                                use_rot_pos_emb=True, ref_feat_shape=(4, 4), global_pool="token"),
    lambda: timm.models.swin_transformer.SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=16,
                                                         depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), num_classes=5),
], ids=["vit", "eva", "swin"])
def test_prune_intermediate_layers_as_timm(build, indices, prune_norm):
    """timm's backbone idiom: prune_intermediate_layers(indices) drops the blocks after the last one taken (and the
    norm / head on request); forward_intermediates(indices=<what it returned>) then gives timm's maps."""
    torch.manual_seed(0)
    ref = build().eval()
    model = from_timm(ref)
    x = torch.randn(2, 3, 32, 32)
    take = ref.prune_intermediate_layers(indices, prune_norm=prune_norm)
    assert model.prune_intermediate_layers(indices, prune_norm=prune_norm) == take
    stack = getattr(model, "encoder", None)
    blocks, ref_blocks = (stack.blocks, ref.blocks) if stack is not None else (model.layers, ref.layers)  # Swin: stages
    assert len(blocks) == len(ref_blocks) == len(model.feature_info) == len(getattr(model.config, "depths", blocks))
    assert model.num_classes == 0
    whole = prune_norm or max(take) == 3  # Swin keeps the original last stage's norm: with fewer stages it fits no map
    with torch.no_grad():
        for fmt in ("NCHW", "NLC") if stack is not None else ("NCHW",):  # timm's Swin gives NCHW maps only
            maps = model.forward_intermediates(x, indices=take, output_fmt=fmt, intermediates_only=not whole)
            ref_maps = ref.forward_intermediates(x, indices=take, output_fmt=fmt, intermediates_only=not whole)
            if whole:
                assert_parity(maps[0], ref_maps[0])
                maps, ref_maps = maps[1], ref_maps[1]
            assert len(maps) == len(ref_maps) == len(take)
            for m, r in zip(maps, ref_maps):
                assert_parity(m, r)
        if whole:
            assert_parity(model.forward_features(x), ref.forward_features(x))
            assert model(x).shape == (2, model.num_features)  # the pooled features


@pytest.mark.parametrize("pool", ["token", "avg"])
@pytest.mark.parametrize("build", [
    lambda pool: timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                                  num_heads=2, num_classes=5, global_pool=pool),
    lambda pool: timm.models.eva.Eva(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5,
                                     use_rot_pos_emb=True, ref_feat_shape=(4, 4), global_pool=pool),
    lambda pool: timm.models.cait.Cait(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5,
                                       depth_token_only=1, global_pool=pool),
], ids=["vit", "eva", "cait"])
def test_reset_classifier_switches_the_pooling_as_timm(build, pool):
    """timm's reset_classifier(num_classes, global_pool): the second argument was a TypeError."""
    torch.manual_seed(0)
    ref = build(pool).eval()
    model = from_timm(ref)
    other = "avg" if pool == "token" else "token"
    x = torch.randn(2, 3, 32, 32)
    for m in (ref, model):
        m.reset_classifier(0, other)
    with torch.no_grad():
        assert_parity(model(x), ref(x))
    assert model.config.pool == other
    rebuilt = type(model)(model.config)  # the config still describes the model: same modules, same outputs
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert_parity(rebuilt.eval()(x), ref(x))
    model.reset_classifier(3, None)  # None keeps the pooling
    assert model.config.pool == other and model(x).shape == (2, 3)
    with pytest.raises(ValueError, match=r"global_pool must be one of 'token', 'avg' .* got ''"):
        model.reset_classifier(0, "")


def test_reset_classifier_global_pool_on_models_without_a_pool_switch():
    import zoo

    swin = zoo.create_model("swin_mnist")
    swin.reset_classifier(4, "avg")
    assert swin(torch.randn(1, 1, 28, 28)).shape == (1, 4)
    with pytest.raises(ValueError, match="global_pool must be one of 'avg' for SwinTransformer, got 'token'"):
        swin.reset_classifier(4, "token")
    vit = zoo.create_model("vit_mnist", depth=1, class_token=False, pool="avg")
    with pytest.raises(ValueError, match="global_pool='token' needs a class token"):
        vit.reset_classifier(4, "token")
    deit = zoo.create_model("vit_mnist_distilled", depth=1)
    deit.reset_classifier(4, "token")
    assert deit.config.pool == "token" and deit.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 4)
    resnet = zoo.create_model("timm_resnet18_mnist")
    resnet.reset_classifier(0, "max")
    assert resnet(torch.randn(1, 1, 28, 28)).shape == (1, resnet.num_features)


@pytest.mark.parametrize("act", ["gelu_tanh", "gelu"])
def test_timm_activation_modules_convert(act):
    """act_layer='gelu_tanh' / 'gelu' give timm's own GELUTanh / GELU modules (timm's SigLIP GAP ViTs, e.g.
    vit_so400m_patch16_siglip_gap_256); the converter knew only torch's nn.GELU and refused them."""
    torch.manual_seed(0)
    ref = timm.create_model("vit_so400m_patch16_siglip_gap_256", pretrained=False, img_size=32, patch_size=8, depth=2,
                            embed_dim=32, num_heads=4, num_classes=5, act_layer=act).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.endswith("bias") or ".mlp." in n:
                p.normal_(0, 1.0)  # the two GELUs differ by up to 4.7e-4 where the inputs are O(1)
    model = from_timm(ref)
    assert model.config.activation == act and model.config.pool == "avg" and not model.config.class_token
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the features: the other GELU moves them by 2e-4
        torch.testing.assert_close(model.forward_features(x), ref.forward_features(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)


def test_timm_vit_without_projection_biases_is_refused():
    ref = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                                           proj_bias=False)
    with pytest.raises(ValueError, match=r"proj_bias=False"):
        from_timm(ref)


@pytest.mark.parametrize("arch, named", [
    ("vit_small_r26_s32_224", "patch embedding HybridEmbed"),  # a ResNet stem: the error was a pos_embed shape mismatch
    ("vit_small_patch16_18x2_224", "block type ParallelThingsBlock"),  # parallel blocks: an AttributeError
    ("vit_base_patch16_xp_224", "block type ParallelScalingBlock"),
])
def test_hybrid_and_parallel_block_vits_are_refused_by_name(arch, named):
    ref = timm.create_model(arch, pretrained=False, img_size=64, depth=1, num_classes=5)
    with pytest.raises(ValueError, match=f"uses options the zoo ViT lacks: {named}"):
        from_timm(ref)


def test_differential_attention_vit_is_refused_by_name():
    """attn_layer='diff' (DiffAttention) failed with a list of unexpected lambda / sub_norm keys."""
    ref = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                                           attn_layer="diff")
    with pytest.raises(ValueError, match="uses options the zoo ViT lacks: attention type DiffAttention"):
        from_timm(ref)


@pytest.mark.parametrize("norm", ["rmsnorm", "simplenorm"])
def test_vit_with_another_norm_layer_is_refused_by_name(norm):
    """norm_layer='rmsnorm' failed with a list of missing LayerNorm bias keys."""
    ref = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4,
                                                           norm_layer=norm)
    with pytest.raises(ValueError, match=f"uses options the zoo ViT lacks: norm_layer {type(ref.blocks[0].norm1).__name__}"):
        from_timm(ref)
