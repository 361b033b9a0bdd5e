"""Swin Transformer v1: parameter counts, parity with timm's SwinTransformer (logits and
forward_intermediates, float32 and float64), the shifted-window mask, attention capture, bad inputs."""
import pytest
import timm
import torch
import torch.nn.functional as F

import zoo
from zoo.core import WindowAttention, capture_attention, shift_mask, window_geometry
from zoo.core.window import relative_position_index
from zoo.interop.timm import from_timm
from zoo.registry import count_parameters

PUBLISHED = {  # timm.create_model(name) on the meta device; the same numbers are in parity_facts_variants.md §1
    "swin_tiny_patch4_window7_224": 28_288_354,
    "swin_small_patch4_window7_224": 49_606_258,
    "swin_base_patch4_window7_224": 87_768_224,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_is_timms(name):
    with torch.device("meta"):
        ours, theirs = zoo.create_model(name), timm.create_model(name)
    assert count_parameters(ours) == sum(p.numel() for p in theirs.parameters()) == PUBLISHED[name]
    assert ours.feature_info == theirs.feature_info


def _pair(kw: dict, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **kw).eval()
    with torch.no_grad():  # timm zero-inits biases; perturb every parameter so that each one matters
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = from_timm(ref)
    return ref.to(dtype), ours.to(dtype)


def _check(ref, ours, x, tol):
    def close(a, b):
        assert a.shape == b.shape
        scale = a.abs().max().item()
        assert (a - b).abs().max().item() <= tol * max(scale, 1e-30), (a - b).abs().max().item() / scale

    with torch.no_grad():
        close(ref(x), ours(x))
        close(ref.forward_features(x), ours.forward_features(x))
        for kw in ({}, {"norm": True}, {"indices": 2}, {"indices": [0, -1], "norm": True}, {"indices": [1], "stop_early": True}):
            final_ref, inter_ref = ref.forward_intermediates(x, **kw)
            final, inter = ours.forward_intermediates(x, **kw)
            close(final_ref, final)
            assert len(inter) == len(inter_ref)
            for a, b in zip(inter_ref, inter):
                close(a, b)
        only = ours.forward_intermediates(x, indices=1, intermediates_only=True)
        close(ref.forward_intermediates(x, indices=1, intermediates_only=True)[0], only[0])


TOL = {torch.float32: 1e-4, torch.float64: 1e-9}
ODD = {  # window sizes, depths and head counts the published sizes don't use; grids that are not window multiples
    "window4_depths2312": (dict(img_size=64, embed_dim=32, depths=(2, 3, 1, 2), num_heads=(2, 4, 2, 8), window_size=4,
                                num_classes=7), (64, 64)),
    "window3_padded_grids": (dict(img_size=40, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=3,
                                  num_classes=5), (40, 40)),
    "rectangular_grey_3_stages": (dict(img_size=(48, 40), embed_dim=16, depths=(3, 2, 2), num_heads=(1, 2, 4), window_size=5,
                                       in_chans=1, mlp_ratio=2.0), (48, 40)),
    "dynamic_size_input": (dict(img_size=40, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=3,
                                dynamic_img_size=True), (52, 44)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", sorted(ODD))
def test_parity_with_timm_on_odd_configs(case, dtype):
    kw, size = ODD[case]
    ref, ours = _pair(kw, dtype)
    _check(ref, ours, torch.randn(2, ref.in_chans, *size, dtype=dtype), TOL[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_parity_with_timm_at_swin_tiny_size(dtype):
    ref, ours = _pair({}, dtype)
    assert count_parameters(ours) == PUBLISHED["swin_tiny_patch4_window7_224"]
    x = torch.randn(1, 3, 224, 224, dtype=dtype)
    with torch.no_grad():
        a, b = ref(x), ours(x)
        _, inter_ref = ref.forward_intermediates(x, norm=True)
        final, inter = ours.forward_intermediates(x, norm=True)
    assert (a - b).abs().max() <= TOL[dtype] * a.abs().max()
    assert [t.shape[1:] for t in inter] == [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)]
    for r, o in zip(inter_ref, inter):
        assert (r - o).abs().max() <= TOL[dtype] * r.abs().max()
    assert final.shape == (1, 7, 7, 768)


def test_from_timm_checkpoint_file(tmp_path):
    from safetensors.torch import save_file

    kw = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=3)
    ref, _ = _pair(kw, torch.float32)
    save_file(ref.state_dict(), tmp_path / "swin.safetensors")
    ours = from_timm(tmp_path / "swin.safetensors", arch="swin_tiny_patch4_window7_224",
                     **{k: v for k, v in kw.items() if k != "num_classes"})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_shift_mask_by_hand_on_a_4x4_grid():
    # window 2, shift 1: per dimension the region code is 0 for c < 2, 1 for c = 2, 2 for c = 3; label = 3 r_y + r_x.
    # Windows (row-major) hold tokens t = py * 2 + px with labels:
    labels = [[0, 0, 0, 0],  # rows 0-1, cols 0-1: one region
              [1, 2, 1, 2],  # rows 0-1, cols 2-3: the column split
              [3, 3, 6, 6],  # rows 2-3, cols 0-1: the row split
              [4, 5, 7, 8]]  # rows 2-3, cols 2-3: four regions
    expected = torch.tensor([[[0.0 if a == b else -100.0 for b in win] for a in win] for win in labels])
    torch.testing.assert_close(shift_mask((4, 4), (2, 2), (1, 1)), expected)
    assert shift_mask((4, 4), (2, 2), (0, 0)) is None
    # shifted along one dimension only: the rows split, the columns never do
    only_rows = shift_mask((4, 4), (2, 2), (1, 0))
    assert only_rows[0].eq(0).all() and only_rows[1].eq(0).all() and only_rows[2].eq(0).sum() == 8


def test_shift_mask_and_relative_index_equal_timms_buffers():
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=(48, 40), embed_dim=16,
                            depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=5)
    ours = from_timm(ref)
    for stage_ref, stage in zip(ref.layers, ours.layers):
        for b_ref, b in zip(stage_ref.blocks, stage.blocks):
            assert (b.attn.window, b.attn.shift) == (tuple(b_ref.window_size), tuple(b_ref.shift_size))
            assert torch.equal(b.attn.relative_position_index, b_ref.attn.relative_position_index)
            if b_ref.attn_mask is None:
                assert b.attn.attn_mask is None
            else:
                assert torch.equal(b.attn.attn_mask, b_ref.attn_mask)
    # a (6, 5) grid with window 5: the short side is one unshifted window, the long one is padded and shifted
    assert window_geometry((6, 5), 5, 2) == ((5, 5), (2, 0))
    assert window_geometry((4, 12), 7, 3) == ((4, 7), (0, 3))


def test_relative_position_index_formula():
    idx = relative_position_index((2, 3))  # N = 6 tokens, table of (2*2-1)*(2*3-1) = 15 rows
    # token 0 = (0, 0), token 5 = (1, 2): dy = -1, dx = -2 -> (-1 + 1) * 5 + (-2 + 2) = 0; the reverse pair -> 14
    assert idx[0, 5] == 0 and idx[5, 0] == 14 and idx.diag().eq(1 * 5 + 2).all()
    assert idx.min() == 0 and idx.max() == 14


def test_window_attention_is_captured_and_masks_across_regions():
    model = zoo.create_model("swin_mnist").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), capture_attention(model) as maps:
        logits = model(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits)  # recording does not change the output (math path vs SDPA)
    assert sorted(maps) == [f"layers.{i}.blocks.{j}.attn" for i, depth in enumerate((2, 4)) for j in range(depth)]
    assert maps["layers.0.blocks.1.attn"].shape == (2 * 4, 2, 49, 49)  # 14x14 grid: 4 windows of 7x7, shifted
    assert maps["layers.1.blocks.1.attn"].shape == (2 * 1, 4, 49, 49)  # 7x7 grid: one window, never shifted
    for w in maps.values():
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert model.layers[1].blocks[1].attn.attn_mask is None
    mask = model.layers[0].blocks[1].attn.attn_mask  # shifted block of stage 0
    shifted = maps["layers.0.blocks.1.attn"].unflatten(0, (2, 4))
    assert (shifted * (mask[None, :, None] < 0)).max() < 1e-30  # exp(-100): no weight across regions
    assert model.image_tower() is None  # window maps are not what `zoo viz attention` draws


def test_contract_features_head_and_checkpointing():
    model = zoo.create_model("swin_mnist", drop_path_rate=0.0).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 7, 7, 128)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        inter = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
    assert [t.shape for t in inter] == [(2, 196, 64), (2, 49, 128)]
    assert [f["reduction"] for f in model.feature_info] == [2, 4]
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)

    model.train()
    loss = model(x).square().sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert model.set_grad_checkpointing(True) == 2 and all(s.gradient_checkpointing for s in model.layers)
    grads_ckpt = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
    for a, b in zip(grads, grads_ckpt):
        torch.testing.assert_close(a, b)


def test_bad_inputs_name_the_fix():
    model = zoo.create_model("swin_mnist").eval()
    with pytest.raises(TypeError, match="expected float images"):
        model(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not divisible by patch_size=4"):
        zoo.create_model("swin_tiny_patch4_window7_224", depths=(1,), num_heads=(1,))(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 1, H, W\)"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'.*or 'NLC'"):
        model.forward_intermediates(torch.randn(1, 1, 28, 28), output_fmt="NHWC")
    with pytest.raises(ValueError, match="feature index 3 is out of range for 2 features"):
        model.forward_intermediates(torch.randn(1, 1, 28, 28), indices=[3])
    with pytest.raises(ValueError, match="one entry per stage"):
        zoo.create_model("swin_mnist", depths=(2, 2), num_heads=(2, 4, 8))
    with pytest.raises(ValueError, match="stem='conv2'.*'patch'.*'conv'"):
        zoo.create_model("swin_mnist", stem="conv2")
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        zoo.create_model("swin_mnist", patch_size=3)
    attn = WindowAttention(8, 2, window=2, shift=1)
    with pytest.raises(ValueError, match=r"image grid \(batch, H, W, channels\)"):
        attn(torch.randn(1, 16, 8))
    with pytest.raises(ValueError, match="takes no mask"):
        attn(torch.randn(1, 4, 4, 8), mask=torch.ones(1, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shift \(2, 2\) in \[0, window\)"):
        WindowAttention(8, 2, window=2, shift=2)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, embed_dim=16, depths=(2, 2),
                            num_heads=(1, 2), window_size=4, global_pool="max")
    with pytest.raises(ValueError, match="global_pool='max'"):
        from_timm(ref)


def test_conv_stem_feeds_the_shifted_windows_a_14x14_grid():
    from zoo.models.swin import SwinConvStem
    from zoo.models.vit import ConvStem

    model = zoo.create_model("swin_mnist").eval()
    stem = model.patch_embed
    assert isinstance(stem, SwinConvStem) and isinstance(stem.down, ConvStem)  # ViT's stem, reused
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        grid = stem(x)
        hand = F.layer_norm(stem.down.net(stem.conv(x)).permute(0, 2, 3, 1), (64,), stem.norm.weight, stem.norm.bias,
                            stem.norm.eps)
    assert grid.shape == (2, 14, 14, 64)
    torch.testing.assert_close(grid, hand)
    assert model.layers[0].blocks[1].attn.attn_mask is not None  # 4 windows of 7x7: the odd block is shifted
    plain = zoo.create_model("swin_mnist", stem="patch")  # the paper's linear patch embedding
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in model.parameters())
