"""ViT switches for variant comparisons (zoo/models/vit.py): pos_embed, norm, norm_first, mlp.

Each switch is one config field built from the shared core; every one builds, trains (forward/backward),
changes the output against the default, and is checked against a reference: MAE's 2-D sin-cos table,
EVA-02's rotary attention, a hand-computed post-norm block, and the plain MLP's parameter count."""
import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.core import RMSNorm, glu_hidden, sincos_table_2d
from zoo.models.eva import Eva, EvaConfig
from zoo.models.mae import sincos_2d_table
from zoo.models.vit import ViTConfig, VisionTransformer

BASE = "vit_digits"  # 8x8 grey digits, patch 2 (4x4 grid), dim 64, 4 heads, depth 4, mean pooling
SWITCHES = [
    dict(pos_embed="sincos"),
    dict(pos_embed="rope"),
    dict(pos_embed="none"),
    dict(norm="rmsnorm"),
    dict(norm_first=False),
    dict(mlp="glu"),  # GEGLU (activation gelu)
    dict(mlp="glu", activation="silu"),  # SwiGLU
]
ALL_ON = dict(pos_embed="rope", norm="rmsnorm", norm_first=False, mlp="glu", activation="silu")
COMBOS = [dict(), *SWITCHES, ALL_ON, dict(pos_embed="sincos", norm="rmsnorm", mlp="glu", pool="token", reg_tokens=2),
          dict(pos_embed="rope", reg_tokens=2, qk_norm=True, pool="token", norm_first=False)]


def ids(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "default"


def perturb(model, seed=0):
    """Weights at scales that make every part count (norm affines of order one, tokens not ~0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("cls_token", "reg_token", "pos_embed")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def build(**kw):
    torch.manual_seed(0)
    return zoo.create_model(BASE, **kw)


def images(n=3, size=8, seed=0):
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_defaults_are_todays_vit():
    cfg = ViTConfig()
    assert (cfg.pos_embed, cfg.norm, cfg.norm_first, cfg.mlp) == ("learn", "layernorm", True, "mlp")
    model = build()
    assert isinstance(model.pos_embed, torch.nn.Parameter) and model.rope is None
    assert "pos_table" not in dict(model.named_buffers())


@pytest.mark.parametrize("kw", SWITCHES, ids=ids)
def test_every_switch_builds_trains_and_changes_the_output(kw):
    base = perturb(build())
    model = build(**kw)
    # the weights both models share (same names and shapes) are copied, so only the switch differs
    theirs = {k: v for k, v in base.state_dict().items() if k in model.state_dict() and v.shape == model.state_dict()[k].shape}
    model.load_state_dict(theirs, strict=False)
    perturb(model, seed=1)
    model.load_state_dict(theirs, strict=False)
    x = images()
    model.train()
    out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"
    model.eval()
    with torch.no_grad():
        diff = (model(x) - base(x)).abs().max().item()
    assert diff > 1e-3, f"{kw} changes nothing ({diff:.2g})"
    assert model.config == ViTConfig(**{**zoo.get_config(BASE).__dict__, **kw})


def test_positions_other_than_learned_have_no_parameter():
    for kind in ("sincos", "rope", "none"):
        model = build(pos_embed=kind)
        names = set(model.state_dict())
        assert model.pos_embed is None and not any("pos" in n for n in names), (kind, names)
        assert zoo.model_info(BASE)["params"] - sum(p.numel() for p in model.parameters()) == 17 * 64  # the table is gone
    assert build(pos_embed="rope").rope is not None


# -- sin-cos ------------------------------------------------------------------------------------------

def test_sincos_table_is_maes_and_the_formula():
    for grid, dim in ((4, 64), (7, 128), (14, 768)):
        torch.testing.assert_close(sincos_table_2d((grid, grid), dim), sincos_2d_table(grid, dim, cls_row=False)[0],
                                   rtol=0, atol=0)
    gh, gw, dim = 3, 5, 8  # non-square grid, by hand: [sin(w ω), cos(w ω), sin(h ω), cos(h ω)], ω_k = 10000^(-k/2)
    table = sincos_table_2d((gh, gw), dim)
    assert table.shape == (gh * gw, dim) and table.dtype == torch.float32
    for h in range(gh):
        for w in range(gw):
            row = []
            for f in (math.sin, math.cos):
                row += [f(w * 10000 ** (-k / 2)) for k in range(2)]
            for f in (math.sin, math.cos):
                row += [f(h * 10000 ** (-k / 2)) for k in range(2)]
            torch.testing.assert_close(table[h * gw + w], torch.tensor(row), rtol=0, atol=1e-7)


def test_sincos_is_added_to_the_patch_tokens_only_and_fixed():
    model = perturb(build(pos_embed="sincos", pool="token", reg_tokens=2))
    assert "pos_table" in dict(model.named_buffers()) and "pos_table" not in model.state_dict()
    x = images()
    with torch.no_grad():
        tokens, grid = model._embed(x)
        patches = model.patch_embed(x)
    assert grid == (4, 4)
    torch.testing.assert_close(tokens[:, 3:], patches + sincos_2d_table(4, 64, cls_row=False))
    torch.testing.assert_close(tokens[:, 0], model.cls_token[0].expand(3, -1))  # MAE's zero class row
    torch.testing.assert_close(tokens[:, 1:3], model.reg_token[0].expand(3, -1, -1))
    y = torch.randn(2, 1, 12, 8)
    with torch.no_grad():  # another image size: the table of its grid (no resampling)
        assert model._embed(y)[1] == (6, 4)
        torch.testing.assert_close(model._embed(y)[0][:, 3:], model.patch_embed(y) + sincos_table_2d((6, 4), 64))
        assert model(y).shape == (2, 10)


# -- rotary -------------------------------------------------------------------------------------------

def eva_twin(model: VisionTransformer) -> Eva:
    """EVA-02's rotary ViT with the same hyper-parameters (plain q/k/v biases, GELU MLP, no absolute positions,
    raw grid coordinates) and the ViT's weights: the names are the same."""
    c = model.config
    eva = Eva(EvaConfig(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
                        dim=c.dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, swiglu=False,
                        key_bias=True, abs_pos=False, rope=True, rope_ref_grid=None, pool=c.pool, norm_eps=c.norm_eps))
    eva.load_state_dict(model.state_dict(), strict=True)
    return eva.eval()


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_rope_is_evas_rotary_attention(pool):
    model = perturb(build(pos_embed="rope", pool=pool)).double()
    eva = eva_twin(model).double()
    x = images().double()
    with torch.no_grad():
        torch.testing.assert_close(model(x), eva(x), rtol=0, atol=1e-12)
        ours, theirs = model.forward_intermediates(x, indices=[0, 2]), eva.forward_intermediates(x, indices=[0, 2])
        torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-12)
        for a, b in zip(ours[1], theirs[1]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        # one block by hand: the block with EVA's table equals ours
        tokens, grid = model._embed(x)
        rope = eva.rope.at(grid, x.device)
        torch.testing.assert_close(model.encoder.blocks[0](tokens, **model._block_kwargs(grid, x.device)),
                                   eva.encoder.blocks[0](tokens, rope=rope), rtol=0, atol=0)


def test_rope_scores_depend_on_the_offset_only():
    """q·k after the rotation depends on the two patches' positions only through their (row, column) offset."""
    model = build(pos_embed="rope", pool="token")
    gh, gw, d = 4, 4, 16
    table = model._block_kwargs((gh, gw), "cpu")["rope"]
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    n = 1 + gh * gw
    rq = table(q.float().expand(1, 1, n, d).clone())[0, 0].double()
    rk = table(k.float().expand(1, 1, n, d).clone())[0, 0].double()
    assert torch.equal(rq[0], q.float().double()) and torch.equal(rk[0], k.float().double())  # class token not rotated
    scores = rq[1:] @ rk[1:].T
    by_offset = {}
    for i in range(gh * gw):
        for j in range(gh * gw):
            offset = (i // gw - j // gw, i % gw - j % gw)
            by_offset.setdefault(offset, []).append(scores[i, j].item())
    assert len(by_offset) == (2 * gh - 1) * (2 * gw - 1)
    for offset, values in by_offset.items():
        assert max(values) - min(values) < 1e-5, (offset, values)
    assert len({round(v[0], 4) for v in by_offset.values()}) > 10  # and the offset matters


# -- feed-forward -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vit_digits", "vit_mnist", "vit_small_patch16_224"])
def test_glu_matches_the_mlps_parameter_count(name):
    with torch.device("meta"):
        plain, glu = zoo.create_model(name), zoo.create_model(name, mlp="glu")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    hidden = int(plain.config.dim * plain.config.mlp_ratio)
    assert glu.encoder.blocks[0].mlp.fc1.out_features == glu_hidden(hidden) == round(2 / 3 * hidden)
    assert glu.encoder.blocks[0].mlp.gate is not None and plain.encoder.blocks[0].mlp.gate is None
    ffn_plain, ffn_glu = count(plain.encoder.blocks[0].mlp), count(glu.encoder.blocks[0].mlp)
    assert abs(ffn_glu - ffn_plain) / ffn_plain < 0.01, (ffn_plain, ffn_glu)
    assert abs(count(glu) - count(plain)) / count(plain) < 0.01


def test_glu_is_geglu_or_swiglu_by_activation():
    for act, cls in (("gelu", torch.nn.GELU), ("silu", torch.nn.SiLU)):
        model = perturb(build(mlp="glu", activation=act))
        mlp = model.encoder.blocks[0].mlp
        assert isinstance(mlp.act, cls)
        h = torch.randn(5, 64)
        act_fn = F.gelu if act == "gelu" else F.silu
        with torch.no_grad():
            torch.testing.assert_close(mlp(h), mlp.fc2(act_fn(mlp.fc1(h)) * mlp.gate(h)))


# -- norms --------------------------------------------------------------------------------------------

def _attention_by_hand(attn, x):
    b, n, dim = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    w = (q @ k.transpose(-2, -1) / math.sqrt(dim // heads)).softmax(-1)
    return F.linear((w @ v).transpose(1, 2).reshape(b, n, dim), attn.proj.weight, attn.proj.bias)


@pytest.mark.parametrize("norm_first", [True, False])
def test_post_norm_puts_the_norm_after_the_residual(norm_first):
    model = perturb(build(norm_first=norm_first, pool="token")).double()
    blk = model.encoder.blocks[0]
    x = images().double()

    def ln(t, norm):
        return F.layer_norm(t, (64,), norm.weight, norm.bias, 1e-6)

    def mlp(t):
        return F.linear(F.gelu(F.linear(t, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)

    with torch.no_grad():
        t = model._embed(x)[0]
        if norm_first:
            h = t + _attention_by_hand(blk.attn, ln(t, blk.norm1))
            ref = h + mlp(ln(h, blk.norm2))
        else:
            h = ln(t + _attention_by_hand(blk.attn, t), blk.norm1)
            ref = ln(h + mlp(h), blk.norm2)
        torch.testing.assert_close(blk(t), ref, rtol=0, atol=1e-10)
        # post-norm blocks already end with a norm: no final norm after the stack
        assert isinstance(model.encoder.norm, torch.nn.Identity) != norm_first
        out = t
        for b in model.encoder.blocks:
            out = b(out)
        torch.testing.assert_close(model.forward_features(x), model.encoder.norm(out), rtol=0, atol=0)


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_rmsnorm_replaces_every_token_norm(pool):
    model = build(norm="rmsnorm", pool=pool, qk_norm=True, pre_norm=True)
    norms = [n for n, m in model.named_modules() if isinstance(m, RMSNorm)]
    assert not [n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    # per block: norm1, norm2, q_norm, k_norm; plus norm_pre and the final norm or fc_norm
    assert len(norms) == 4 * model.config.depth + 2, norms
    x = images()
    ref = build(pool=pool, qk_norm=True, pre_norm=True)
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if k in ref.state_dict()}, strict=False)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() > 1e-4


# -- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    (dict(pos_embed="learned"), "pos_embed must be one of 'learn', 'sincos', 'rope', 'none', got 'learned'"),
    (dict(pos_embed=None), "pos_embed must be one of"),
    (dict(norm="batchnorm"), "norm must be one of 'layernorm', 'rmsnorm', got 'batchnorm'"),
    (dict(norm="rmsnorm_fp32"), "norm must be one of"),
    (dict(mlp="swiglu"), "mlp must be one of 'mlp', 'glu', got 'swiglu'"),
    (dict(norm_first="post"), "norm_first='post' is not a bool"),  # a string for a bool field: read as YAML, refused
    (dict(pos_embed="rope", dim=40, num_heads=4), "pos_embed='rope' needs a head_dim"),
    (dict(pos_embed="sincos", dim=66, num_heads=3), "pos_embed='sincos' needs a dim divisible by 4"),
    (dict(norm_first=False, layer_scale=1e-5), "layer_scale=1e-05 needs pre-norm blocks"),
])
def test_bad_values_name_the_field_and_the_choices(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        zoo.create_model(BASE, **kw)


# -- the contract for every switch: intermediates, other sizes, export -------------------------------

@pytest.mark.parametrize("kw", COMBOS, ids=ids)
def test_switch_combos_keep_the_contract(kw):
    model = perturb(build(**kw))
    x = images()
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), out)
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(maps) == model.config.depth and all(m.shape == (3, 64, 4, 4) for m in maps)
        nlc = model.forward_intermediates(x, indices=[1], output_fmt="NLC", intermediates_only=True, stop_early=True)
        assert nlc[0].shape == (3, 16, 64)
        torch.testing.assert_close(nlc[0], maps[1].flatten(2).transpose(1, 2))
        bigger = model(images(2, 12))  # another grid (6x6): learned positions resized, the others computed for it
        assert bigger.shape == (2, 10) and torch.isfinite(bigger).all()
    model.set_grad_checkpointing()
    model.train()
    model.forward_intermediates(x)[0].sum().backward()


def test_torch_export_and_onnx_of_all_switches(tmp_path):
    from zoo.export import export_file, export_torch, example_inputs

    model = perturb(build(**ALL_ON))
    ex = example_inputs(model, batch=2)
    program = export_torch(model, ex)
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)
    pytest.importorskip("onnxruntime")
    from zoo.export import check_onnx

    path = tmp_path / "vit_switches.onnx"
    export_file(model, path, "onnx", batch=2)
    assert check_onnx(model, path, example_inputs(model, 3, seed=3)) <= 1e-4


def test_switches_that_peers_lack_are_refused_by_name(tmp_path):
    from zoo.interop.hf_vit import to_hf

    with pytest.raises(ValueError, match="transformers' ViT has no mlp=glu"):
        to_hf(zoo.create_model("vit_small_patch16_224", mlp="glu", depth=1), tmp_path)
    with pytest.raises(ValueError, match="norm_first=False"):
        to_hf(zoo.create_model("vit_small_patch16_224", norm_first=False, depth=1), tmp_path)
    with pytest.raises(ValueError, match="learned positions only.*pos_embed='learn'"):
        zoo.create_model("vit_mnist_distilled", pos_embed="rope")
