"""CaiT (Touvron et al. 2021) on the shared core, against timm's `Cait` (random weights, nothing downloaded)."""
import math

import pytest
import timm
import torch
from safetensors.torch import save_file

import zoo
from zoo.core import BlockConfig, TalkingHeadsAttention, TransformerBlock, capture_attention, talking_heads_attention
from zoo.interop import from_timm
from zoo.registry import count_parameters


def assert_parity(out, ref, tol):
    assert out.shape == ref.shape, (out.shape, ref.shape)
    bound = tol * max(1.0, ref.abs().max().item())
    err = (out - ref).abs().max().item()
    assert err <= bound, f"max|diff| {err:.3g} > {bound:.3g}"


def perturbed_timm(name="cait_xxs24_224", seed=0, **kw):
    """A random timm CaiT whose every part matters: timm's init leaves LayerScale at 1e-5 and the head
    mixers near zero, under which a wrong block or a wrong mixing would hardly show in the logits."""
    torch.manual_seed(seed)
    ref = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "gamma" in n:
                p.uniform_(0.2, 1.0)
            elif "proj_l" in n or "proj_w" in n:
                p.normal_(0.0, 0.5)
            elif "norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return ref


DTYPES = ((torch.float32, 1e-4), (torch.float64, 1e-9))


def check_parity(ref, model, x, intermediate_calls=({},)):
    """Logits, forward_features and forward_intermediates (each kwargs set) against timm, fp32 and fp64."""
    for dtype, tol in DTYPES:
        ref, model, xd = ref.to(dtype), model.to(dtype), x.to(dtype)
        with torch.no_grad():
            assert_parity(model(xd), ref(xd), tol)
            assert_parity(model.forward_features(xd), ref.forward_features(xd), tol)
            for kw in intermediate_calls:
                out, want = model.forward_intermediates(xd, **kw), ref.forward_intermediates(xd, **kw)
                if not kw.get("intermediates_only"):
                    assert_parity(out[0], want[0], tol)
                    out, want = out[1], want[1]
                assert len(out) == len(want) > 0
                for a, b in zip(out, want):
                    assert_parity(a, b, tol)


@pytest.mark.parametrize("name", ["cait_xxs24_224", "cait_s24_224"])
def test_parameter_counts_identical_to_timm(name):
    with torch.device("meta"):
        ours, theirs = zoo.create_model(name), timm.create_model(name)
    assert count_parameters(ours) == sum(p.numel() for p in theirs.parameters())
    assert count_parameters(ours) == {"cait_xxs24_224": 11_956_264, "cait_s24_224": 46_916_200}[name]  # parity facts §2


def test_cait_mnist_is_a_small_grey_model():
    model = zoo.create_model("cait_mnist")
    assert count_parameters(model) < 6_000_000
    x = model.example_inputs(2).tensors["images"]
    assert x.shape == (2, 1, 28, 28) and model(x).shape == (2, 10)


def test_published_size_parity_cait_xxs24_224():
    """cait_xxs24_224 at 224 px, batch 1: logits, features and all 24 intermediates (plus the normed last 2)."""
    ref = perturbed_timm("cait_xxs24_224")
    model = from_timm(ref)
    assert model.config == zoo.get_config("cait_xxs24_224")
    check_parity(ref, model, torch.randn(1, 3, 224, 224), ({}, {"indices": 2, "norm": True, "output_fmt": "NLC"}))


ODD = [  # depth, heads, class_depth, dim, img, patch, extra timm kwargs
    (1, 3, 1, 48, 48, 16, {}),
    (5, 6, 3, 36, 40, 8, {"global_pool": "avg", "mlp_ratio": 3.0}),
    (2, 1, 4, 32, 24, 4, {"mlp_ratio_token_only": 2.0, "qkv_bias": False}),
]


@pytest.mark.parametrize("depth,heads,class_depth,dim,img,patch,extra", ODD)
def test_from_timm_parity_odd_configs(depth, heads, class_depth, dim, img, patch, extra):
    ref = perturbed_timm(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                         depth_token_only=class_depth, num_classes=5, **extra)
    model = from_timm(ref)
    cfg = model.config
    assert (cfg.depth, cfg.num_heads, cfg.class_depth, cfg.dim, cfg.pool) == (depth, heads, class_depth, dim,
                                                                             extra.get("global_pool", "token"))
    calls = ({}, {"indices": [0, -1], "norm": True}, {"indices": 1, "output_fmt": "NLC", "intermediates_only": True},
             {"indices": [0], "stop_early": True})
    check_parity(ref, model, torch.randn(2, 3, img, img), calls)
    with torch.no_grad():  # the intermediates are the patch tokens of the talking-heads blocks, as maps
        maps = model.forward_intermediates(torch.randn(1, 3, img, img, dtype=torch.float64), intermediates_only=True)
    assert len(maps) == depth and maps[0].shape == (1, dim, img // patch, img // patch)


def test_from_timm_checkpoint_file_plus_arch(tmp_path):
    ref = perturbed_timm(img_size=32, depth=2, num_classes=3)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "cait.safetensors")
    model = from_timm(tmp_path / "cait.safetensors", arch="cait_xxs24_224", img_size=32, depth=2)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert_parity(model(x), ref(x), 1e-4)


def test_from_timm_refuses_what_zoo_cait_lacks():
    ref = timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, depth=1, global_pool="")
    with pytest.raises(ValueError, match="global_pool=''"):
        from_timm(ref)


# -- talking heads -------------------------------------------------------------------------------

def hand_talking_heads(attn: TalkingHeadsAttention, x: torch.Tensor, causal: bool = False):
    """Shazeer et al. 2020 written out with loops over heads (x: one sequence (L, D), float64);
    returns the output (L, D) and the softmax probabilities (H, L, L) between the two mixings."""
    H, hd = attn.num_heads, attn.head_dim
    L = x.shape[0]
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = (qkv[:, i * H * hd:(i + 1) * H * hd] for i in range(3))
    head = lambda t, h: t[:, h * hd:(h + 1) * hd]  # noqa: E731
    logits = [head(q, h) @ head(k, h).T / math.sqrt(hd) for h in range(H)]
    Wl, bl, Ww, bw = attn.proj_l.weight, attn.proj_l.bias, attn.proj_w.weight, attn.proj_w.bias
    mixed = [sum(Wl[g, h] * logits[h] for h in range(H)) + bl[g] for g in range(H)]
    if causal:
        mixed = [m.masked_fill(torch.ones(L, L).triu(1).bool(), float("-inf")) for m in mixed]
    probs = [m.softmax(-1) for m in mixed]
    post = [sum(Ww[g, h] * probs[h] for h in range(H)) + bw[g] for g in range(H)]
    out = torch.cat([post[g] @ head(v, g) for g in range(H)], dim=-1)
    return out @ attn.proj.weight.T + attn.proj.bias, torch.stack(probs)


@pytest.mark.parametrize("causal", [False, True])
def test_talking_heads_against_a_hand_computation(causal):
    torch.manual_seed(0)
    attn = TalkingHeadsAttention(12, 3).double().eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    attn.record_weights = True
    with torch.no_grad():
        out = attn(x, causal=causal)
    for b in range(2):
        want, probs = hand_talking_heads(attn, x[b], causal)
        torch.testing.assert_close(out[b], want, atol=1e-12, rtol=0)
        torch.testing.assert_close(attn.last_weights[b], probs, atol=1e-12, rtol=0)
    # the mixing is real: without proj_l / proj_w (identity, no bias) it is plain multi-head attention
    with torch.no_grad():
        for mixer in (attn.proj_l, attn.proj_w):
            mixer.weight.copy_(torch.eye(3))
            mixer.bias.zero_()
        plain = torch.nn.functional.scaled_dot_product_attention(*attn._project(x, None), is_causal=causal)
        torch.testing.assert_close(attn(x, causal=causal), attn.proj(plain.transpose(1, 2).flatten(2)))


def test_talking_heads_plugs_into_the_core_block_with_layerscale():
    cfg = BlockConfig(dim=16, num_heads=4, mlp_hidden=32, layer_scale=1e-5)
    block = TransformerBlock(cfg, attn_layer=talking_heads_attention)
    names = {n for n, _ in block.named_parameters()}
    assert {"attn.qkv.weight", "attn.proj_l.weight", "attn.proj_w.bias", "attn.proj.weight", "ls1.gamma", "ls2.gamma"} <= names
    assert block.ls1.gamma.eq(1e-5).all()
    assert block(torch.randn(2, 7, 16)).shape == (2, 7, 16)


def test_talking_heads_refuses_a_cache_and_other_head_dims():
    from zoo.core import KVCache

    attn = TalkingHeadsAttention(8, 2)
    with pytest.raises(ValueError, match="cache"):
        attn(torch.randn(1, 3, 8), cache=KVCache())
    with pytest.raises(ValueError, match="head_dim"):
        talking_heads_attention(BlockConfig(dim=8, num_heads=2, mlp_hidden=8, head_dim=8))


# -- the model -----------------------------------------------------------------------------------

def test_attention_capture_sees_both_attentions():
    model = zoo.create_model("cait_mnist").eval()
    cfg = model.config
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), capture_attention(model) as maps:
        model(x)
    n = (28 // cfg.patch_size) ** 2
    trunk = [f"encoder.blocks.{i}.attn" for i in range(cfg.depth)]
    heads = [f"class_blocks.{j}.attn" for j in range(cfg.class_depth)]
    assert sorted(maps) == sorted(trunk + heads)
    for name in trunk:
        assert maps[name].shape == (2, cfg.num_heads, n, n)
    for name in heads:  # only the class token queries, over [cls; patches]
        assert maps[name].shape == (2, cfg.num_heads, 1, n + 1)
    for w in maps.values():
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


def test_head_classifier_and_checkpointing():
    torch.manual_seed(0)
    model = zoo.create_model("cait_mnist", depth=2)
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1 + 49, 128)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
        torch.testing.assert_close(model.forward_head(feats), model(x))
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)
    model.train()
    grads = []
    for enable in (False, True):
        assert model.set_grad_checkpointing(enable) == 1
        model.zero_grad()
        model.forward_intermediates(x, intermediates_only=True)[-1].sum().backward()
        model(x).sum().backward()
        grads.append(model.encoder.blocks[0].attn.proj_l.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bad_input_and_config_errors():
    model = zoo.create_model("cait_mnist")
    with pytest.raises(ValueError, match="in_chans"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="patch_size=4"):
        model(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(torch.randn(1, 1, 28, 28), output_fmt="NHWC")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(torch.randn(1, 1, 28, 28), indices=[6])
    with pytest.raises(ValueError, match="pool"):
        zoo.create_model("cait_mnist", pool="max")
    with pytest.raises(ValueError, match="class_depth"):
        zoo.create_model("cait_mnist", class_depth=0)
    with pytest.raises(ValueError, match="divisible"):
        zoo.create_model("cait_mnist", img_size=30)


def test_bench_peer_is_timms_cait_with_the_same_parameters_and_macs():
    from zoo.bench.peers import PeerUnavailable, build_peer
    from zoo.bench.speed import count_macs, example_inputs, zoo_call

    model = zoo.create_model("cait_xxs24_224", img_size=32, depth=2, num_classes=5)
    peer = build_peer(model, "cait_xxs24_224", "cait")
    assert peer.label == "timm.cait_xxs24_224" and count_parameters(peer.module) == count_parameters(model)
    inputs, _, _ = example_inputs(model, 2, seq_len=8, tgt_len=4)
    assert count_macs(model, zoo_call, inputs) == count_macs(peer.module, peer.call, inputs) > 0
    assert peer.call(peer.module.eval(), inputs).shape == (2, 5)
    with pytest.raises(PeerUnavailable, match="conv"):
        build_peer(zoo.create_model("cait_mnist"), "cait_mnist", "cait")


def test_feature_info_names_the_blocks_and_features_only_returns_their_maps():
    model = zoo.create_model("cait_mnist").eval()
    assert len(model.feature_info) == model.config.depth
    for i, f in enumerate(model.feature_info):
        assert model.get_submodule(f["module"]) is model.encoder.blocks[i] and (f["num_chs"], f["reduction"]) == (128, 4)
    backbone = zoo.create_model("cait_mnist", features_only=True, out_indices=(1, -1)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        maps = backbone(x)
        want = backbone.model.forward_intermediates(x, indices=[1, 5], intermediates_only=True)
    assert [m.shape for m in maps] == [(2, 128, 7, 7)] * 2
    for a, b in zip(maps, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("indices,prune_norm", [([0, 2], False), (2, True)])
def test_prune_intermediate_layers_as_timm(indices, prune_norm):
    """timm's Cait.prune_intermediate_layers; zoo's CaiT had none (AttributeError)."""
    ref = perturbed_timm(img_size=32, depth=4, depth_token_only=1)
    model = from_timm(ref)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.forward_intermediates(x, indices=indices, intermediates_only=True)
    take = model.prune_intermediate_layers(indices, prune_norm=prune_norm)
    assert take == ref.prune_intermediate_layers(indices, prune_norm=prune_norm)
    assert len(model.encoder.blocks) == len(ref.blocks) == model.config.depth == len(model.feature_info)
    with torch.no_grad():
        after = model.forward_intermediates(x, indices=take, intermediates_only=True)
        for a, b, c in zip(after, before, ref.forward_intermediates(x, indices=take, intermediates_only=True)):
            assert_parity(a, b, 1e-6)
            assert_parity(a, c, 1e-4)
        feats = model.forward_features(x)
        assert_parity(feats, ref.forward_features(x), 1e-4)  # norm(trunk(x)): no class token any more
        assert_parity(model(x), feats.mean(1), 1e-6)  # the pooled features, as a pruned ViT
