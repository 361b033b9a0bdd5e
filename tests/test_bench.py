"""zoo bench: like-for-like peers, MAC counting, interleaved timing, memory, goals, CLI output."""
import json
import re

import pytest
import torch

import zoo
from zoo.bench.cli import speed_main
from zoo.bench.peers import PeerUnavailable, build_peer
from zoo.bench.speed import (check_goals, count_macs, format_goals, example_inputs, peak_memory_mb, ratio_ci, time_interleaved, zoo_call)
from zoo.registry import count_parameters

PEER_CASES = {  # tiny versions of each family; the peer must have the same parameters and MACs
    "vit_digits": {},
    "bert_tiny": dict(head="none", vocab_size=100, max_positions=64),
    "t5_small": dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2),
    "t5_v1_1_small": dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2),  # untied lm_head
    "transformer_tiny": dict(vocab_size=100, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=2,
                             dim_feedforward=64, max_len=64),
    "gpt2_tiny": dict(vocab_size=100, depth=2, max_positions=64),
    "gpt2_tiny.untied": dict(vocab_size=100, depth=2, max_positions=64, tie_word_embeddings=False),
    "llama_tiny": dict(vocab_size=100, depth=2, max_positions=64),
    "tinyllama_1_1b": dict(vocab_size=100, dim=64, depth=2, num_heads=8, num_kv_heads=2, mlp_hidden=96),  # untied
    "swin_mnist": dict(stem="patch"),  # timm's SwinTransformer built from the zoo config (conv stem: no peer)
    "eva02_mnist": dict(depth=2),  # timm's Eva built from the zoo config (2-D RoPE, SwiGLU, mean pooling)
}


@pytest.mark.parametrize("name", list(PEER_CASES))
def test_peer_is_the_same_configuration(name):
    kwargs, name = PEER_CASES[name], name.split(".")[0]  # "<model>.<what differs>": a second case of one model
    model = zoo.create_model(name, **kwargs)
    peer = build_peer(model, name, zoo.model_info(name)["family"])
    inputs, _, _ = example_inputs(model, 2, seq_len=12, tgt_len=5)
    extra = 0
    if name == "transformer_tiny":  # nn.Transformer always adds final encoder and decoder LayerNorms
        extra = 2 * 2 * model.config.d_model
    assert count_parameters(peer.module) == count_parameters(model) + extra
    zoo_macs, peer_macs = count_macs(model, zoo_call, inputs), count_macs(peer.module, peer.call, inputs)
    assert zoo_macs == peer_macs > 0
    out = peer.call(peer.module.eval(), inputs)
    assert out.shape == model.eval()(*inputs.values()).shape


def test_untied_t5_peer_computes_what_the_zoo_model_computes():
    """T5 v1.1 has its own lm_head and an unscaled decoder output: transformers 5 ties T5 whatever the config says,
    so the peer must be untied by hand; with the zoo model's weights it gives the same logits."""
    from zoo.interop import from_hf

    model = zoo.create_model("t5_v1_1_small", **PEER_CASES["t5_v1_1_small"]).eval()
    peer = build_peer(model, "t5_v1_1_small", "t5")
    assert peer.module.lm_head.weight is not peer.module.shared.weight
    assert peer.module.encoder.embed_tokens.weight is peer.module.shared.weight
    model.load_state_dict(from_hf(peer.module).state_dict())
    inputs, _, _ = example_inputs(model, 2, seq_len=12, tgt_len=5)
    with torch.no_grad():
        ours, theirs = model(*inputs.values()), peer.call(peer.module.eval(), inputs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_bert_peer_takes_the_zoo_activation():
    """The BERT peer passed zoo's activation name to transformers as is: activation='gelu_tanh' stopped with
    KeyError 'gelu_tanh' (transformers calls it gelu_new). With the zoo model's weights the outputs agree."""
    from zoo.interop import from_hf

    model = zoo.create_model("bert_tiny", **PEER_CASES["bert_tiny"], activation="gelu_tanh").eval()
    peer = build_peer(model, "bert_tiny", "bert")
    model.load_state_dict(from_hf(peer.module).state_dict())
    inputs, _, _ = example_inputs(model, 2, seq_len=12)
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs.values()), peer.call(peer.module.eval(), inputs), rtol=1e-5, atol=1e-5)


def test_conv_stem_has_no_peer():
    with pytest.raises(PeerUnavailable, match="conv"):
        build_peer(zoo.create_model("vit_mnist"), "vit_mnist", "vit")


def test_swin_peer_has_the_zoo_stem_and_norms():
    """A conv-stem Swin has no timm peer (it was timed against a patch-stem SwinTransformer, 642158 against 635518
    parameters); a patch-stem one gets timm's model with the same norm eps, hence the same logits."""
    from zoo.interop import from_timm

    with pytest.raises(PeerUnavailable, match="'conv' stem"):
        build_peer(zoo.create_model("swin_mnist"), "swin_mnist", "swin")
    model = zoo.create_model("swin_mnist", stem="patch", norm_eps=0.1).eval()
    peer = build_peer(model, "swin_mnist", "swin")
    model.load_state_dict(from_timm(peer.module).state_dict())
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), peer.module.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(qk_norm=True, norm_eps=1e-5), dict(reg_tokens=4, layer_scale=0.1, no_embed_class=True),
                                    dict(activation="relu", pool="token")])
def test_vit_peer_is_built_with_every_setting_of_the_zoo_config(kwargs):
    """timm's VisionTransformer was built from the sizes only: a zoo ViT with QK-norm, registers, layer scale or
    another activation or eps was timed against a plain one. With the zoo model's weights the logits agree."""
    from zoo.interop import from_timm

    model = zoo.create_model("vit_digits", **kwargs).eval()
    peer = build_peer(model, "vit_digits", "vit")
    assert count_parameters(peer.module) == count_parameters(model)
    model.load_state_dict(from_timm(peer.module).state_dict())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), peer.module.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, setting", [(dict(mlp="glu", activation="silu"), "mlp 'glu'"),
                                             (dict(norm="rmsnorm"), "norm 'rmsnorm'"), (dict(pos_embed="sincos"), "pos_embed")])
def test_vit_peer_is_refused_when_timm_cannot_build_the_same_model(kwargs, setting):
    with pytest.raises(PeerUnavailable, match=f"cannot be built with the same settings.*{setting}"):
        build_peer(zoo.create_model("vit_digits", **kwargs), "vit_digits", "vit")


def test_cait_peer_has_the_zoo_norm_eps_and_activation():
    """timm's Cait was built with its own eps (1e-6) and GELU whatever the zoo config said; now with the zoo's,
    and with the zoo model's weights the logits agree."""
    from zoo.interop import from_timm

    model = zoo.create_model("cait_mnist", stem="patch", depth=2, norm_eps=0.1, activation="relu").eval()
    peer = build_peer(model, "cait_mnist", "cait")
    model.load_state_dict(from_timm(peer.module).state_dict())
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), peer.module.eval()(x), rtol=1e-5, atol=1e-5)


def test_torch_transformer_peer_embeds_as_the_zoo_model_does():
    """The nn.Transformer peer always scaled its embeddings by sqrt(d) and added interleaved sinusoids, and took a
    zoo model with learned or rotary positions (more parameters, other work) for one with sinusoids."""
    from zoo.interop.torch_nn import from_torch_transformer

    kw = dict(PEER_CASES["transformer_tiny"], scale_embedding=False, sinusoid_layout="halves", norm_first=True)
    model = zoo.create_model("transformer_tiny", **kw).eval()
    peer = build_peer(model, "transformer_tiny", "transformer")
    p = peer.module.eval()
    ours = from_torch_transformer(p.transformer, vocab_size=100, src_embed=p.src_embed, tgt_embed=p.tgt_embed,
                                  generator=p.generator, **{k: kw[k] for k in ("scale_embedding", "sinusoid_layout", "max_len")})
    inputs, _, _ = example_inputs(model, 2, seq_len=12, tgt_len=5)
    with torch.no_grad():
        torch.testing.assert_close(ours(*inputs.values()), peer.call(p, inputs), rtol=1e-5, atol=1e-5)
    for pos in ("learned", "rope"):
        with pytest.raises(PeerUnavailable, match=f"pos_embed='{pos}'"):
            build_peer(zoo.create_model("transformer_tiny", pos_embed=pos), "transformer_tiny", "transformer")


@pytest.mark.parametrize("name, family", [("vit_tiny_patch16_224", "vit"), ("eva02_tiny_patch14_224", "eva"), ("eva02_mnist", "eva")])
def test_published_peer_has_the_zoo_drop_rates(name, family):
    """A peer built by its published timm name took timm's default drop rates, not the zoo model's: the training
    step of a zoo model with stochastic depth was timed against one without; and any zoo Eva with stochastic depth
    was refused a peer ("drop_path_rate 0.2 (timm: 0.0)": the converter does not read drop rates back)."""
    model = zoo.create_model(name, drop_path_rate=0.2, drop_rate=0.1)
    peer = build_peer(model, name, family)
    probs = [m.drop_prob for m in peer.module.modules() if type(m).__name__ == "DropPath"]
    assert probs and max(probs) == pytest.approx(0.2)
    assert peer.module.head_drop.p == pytest.approx(0.1)


def test_eva_peer_is_refused_when_timm_cannot_build_the_same_model():
    """timm's Eva has no ReLU MLP: the peer, read back through zoo's timm converter, would be another model."""
    model = zoo.create_model("eva02_mnist", depth=2, swiglu=False, activation="relu")
    with pytest.raises(PeerUnavailable, match=r"cannot be built with the same settings.*activation 'relu' \(timm: 'gelu'\)"):
        build_peer(model, "eva02_mnist", "eva")


def test_macs_of_attention_follow_the_formula():
    """SDPA on CPU is counted too: B·H·(2·L²·d) MACs for scores and values."""
    mha = zoo.core.MultiHeadAttention(32, 4)
    x = torch.randn(1, 10, 32)
    expected = 10 * 32 * 96 + 2 * 4 * 10 * 10 * 8 + 10 * 32 * 32  # qkv, attention, proj
    assert count_macs(mha, lambda m, inp: m(inp["x"]), {"x": x}) == expected


def test_rounds_alternate_and_every_step_is_timed():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_interleaved(steps, warmup=1, rounds=4, per_round=2)
    assert calls == ["a", "b"] + ["a", "a", "b", "b", "b", "b", "a", "a"] * 2
    assert {k: len(v) for k, v in times.items()} == {"a": 8, "b": 8}


def test_peak_memory_sees_a_large_temporary():
    mb = peak_memory_mb(lambda: torch.ones(20_000_000).sum())  # an 80 MB temporary
    assert mb is None or 60 < mb < 200


def test_goals_compare_ratios_and_utilisation():
    base = dict(model="vit_small_patch16_224", side="zoo", batch=16, precision="fp32", compile=False, grad_ckpt=False,
                seq_len=None, tgt_len=None, peer="timm")
    rows = [dict(base, mode="forward", vs_peer=1.05, utilisation=0.62), dict(base, mode="train", vs_peer=0.97),
            dict(base, mode="forward", batch=4, vs_peer=0.5)]  # not the goal configuration: ignored
    goals = {g["goal"]: g["met"] for g in check_goals(rows)}
    assert goals == {"vit_small_patch16_224 forward ≥ 1.0× timm": True, "vit_small_patch16_224 train ≥ 1.0× timm": False,
                     "vit_small_patch16_224 forward ≥ 80% of sgemm peak": False}


def test_goals_of_compile_and_bf16_use_the_right_rows():
    base = dict(model="bert_base", side="zoo", batch=8, grad_ckpt=False, seq_len=128, tgt_len=None,
                peer="transformers.BertModel", mode="train")
    rows = [dict(base, precision="fp32", compile=False, vs_peer=1.01),
            dict(base, precision="fp32", compile=True, vs_peer=0.98, vs_peer_eager=1.12, vs_eager=1.11),
            dict(base, precision="bf16", compile=False, vs_peer=1.0, vs_fp32=1.79),
            dict(base, precision="bf16", compile=True, vs_peer=2.0, vs_fp32=2.5)]  # not a goal setting: ignored
    goals = {g["goal"]: (g["met"], g["value"]) for g in check_goals(rows)}
    assert goals == {"bert_base train ≥ 1.0× transformers.BertModel": (True, 1.01),
                     "bert_base compiled train ≥ 1.10× transformers.BertModel eager": (True, 1.12),
                     "bert_base compiled train ≥ 1.0× transformers.BertModel compiled": (False, 0.98),
                     "bert_base bf16 train ≥ 1.8× float32": (False, 1.79)}
    assert "[MISSED] bert_base bf16 train ≥ 1.8× float32: 1.790x" in format_goals(check_goals(rows))


def test_median_interval_is_the_binomial_order_statistics():
    from zoo.bench.speed import median_ci

    # n = 9: P(Bin(9, 1/2) <= 1) = 10 / 512, so x(2)..x(8) covers the median with 1 - 20/512; x(3)..x(7) would
    # cover it with only 1 - 2 * 46 / 512 = 82 %
    assert median_ci([9, 1, 8, 2, 7, 3, 6, 4, 5]) == (2, 8, pytest.approx(1 - 20 / 512))
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0, pytest.approx(1 - 2 / 32))  # too few for 95 %: extremes
    with pytest.raises(ValueError, match="at least one value"):
        median_ci([])


def test_goals_say_when_the_rounds_straddle_the_bar():
    from zoo.bench.speed import ratio_ci

    base = dict(model="bert_base", side="zoo", batch=8, grad_ckpt=False, seq_len=128, tgt_len=None,
                peer="transformers.BertModel", mode="train", precision="fp32", compile=False)
    zoo_rounds, peer_rounds = [100.0, 100.0, 100.0, 100.0, 100.0], [97.0, 99.0, 101.0, 98.0, 104.0]
    ci = ratio_ci(peer_rounds, zoo_rounds)
    assert ci[:2] == [pytest.approx(0.97), pytest.approx(1.04)]
    (noisy,) = check_goals([dict(base, vs_peer=0.99, vs_peer_ci=ci)])
    (clear,) = check_goals([dict(base, vs_peer=0.95, vs_peer_ci=[0.93, 0.97, 0.94])])
    assert (noisy["met"], noisy["clear"], clear["met"], clear["clear"]) == (False, False, False, True)
    text = format_goals([noisy, clear])
    assert "0.990x (0.970-1.040, 94%; within the noise of this run)" in text and "0.950x (0.930-0.970, 94%)" in text


@pytest.mark.slow
def test_speed_compile_both_times_eager_and_compiled_in_one_run(tmp_path):
    speed_main(["vit_digits", "--vs-peers", "--batch-size", "4", "--warmup", "1", "--rounds", "2", "--steps", "1",
                "--modes", "train", "--compile", "both", "--no-memory", "--peak-size", "128", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert {(r["side"], r["compile"]) for r in rows} == {(s, c) for s in ("zoo", "peer") for c in (False, True)}
    med = {(r["side"], r["compile"]): r["median_ms"] for r in rows}
    z = next(r for r in rows if r["side"] == "zoo" and r["compile"])
    assert z["vs_eager"] == pytest.approx(med[("zoo", False)] / med[("zoo", True)])
    assert z["vs_peer"] == pytest.approx(med[("peer", True)] / med[("zoo", True)])
    assert z["vs_peer_eager"] == pytest.approx(med[("peer", False)] / med[("zoo", True)])
    eager = next(r for r in rows if r["side"] == "zoo" and not r["compile"])
    assert z["vs_eager_ci"] == list(ratio_ci(eager["round_ms"], z["round_ms"]))  # every ratio has its interval


def test_unequal_work_against_the_peer_is_shown(capsys):
    """With a class-token head the zoo ViT's last block computes one row (fewer MACs than timm for the same logits):
    the speed ratio then compares unequal work, and the row, a note and the goal text say so."""
    from zoo.bench.speed import SpeedOptions, bench_model

    opts = SpeedOptions(batch_size=2, modes=("forward",), vs_peers=True, warmup=0, rounds=1, steps=1, memory=False,
                        peak_size=64, model_overrides=dict(pool="token"))
    rows = bench_model("vit_digits", opts, 128, None)
    z, p = (next(r for r in rows if r["side"] == side) for side in ("zoo", "peer"))
    assert z["macs_per_sample"] < p["macs_per_sample"]
    assert z["macs_vs_peer"] == pytest.approx(z["macs_per_sample"] / p["macs_per_sample"])
    assert f"does {z['macs_vs_peer']:.3f}x the MACs of timm.VisionTransformer" in capsys.readouterr().out
    row = dict(z, model="vit_small_patch16_224", batch=16, vs_peer=1.07)
    (goal,) = check_goals([row])
    assert goal["goal"].endswith(f"(zoo does {z['macs_vs_peer']:.3f}x the peer's MACs)")
    (same,) = check_goals([dict(row, macs_vs_peer=1.0)])
    assert "MACs" not in same["goal"]


def test_gradient_checkpointing_is_recorded_per_side(capsys):
    """torch.nn.Transformer has no checkpointing switch: with --gradient-checkpointing the zoo model recomputed its
    activations and the peer did not, while both rows said grad_ckpt=True."""
    from zoo.bench.speed import SpeedOptions, bench_model, format_table

    opts = SpeedOptions(batch_size=2, tgt_len=4, modes=("train",), vs_peers=True, gradient_checkpointing=True, warmup=0,
                        rounds=1, steps=1, memory=False, peak_size=64, model_overrides=PEER_CASES["transformer_tiny"])
    rows = bench_model("transformer_tiny", opts, 8, None)
    z, p = (next(r for r in rows if r["side"] == side) for side in ("zoo", "peer"))
    assert (z["grad_ckpt"], p["grad_ckpt"], z["peer_grad_ckpt"]) == (True, False, False)
    assert "has no gradient-checkpointing switch; it runs without" in capsys.readouterr().out
    table = format_table(rows)
    assert "[ckpt] zoo.transformer_tiny" in table and "[ckpt] torch" not in table


def test_img_size_builds_both_sides_for_that_size(tmp_path):
    """--img-size fed other images to a model built for its own size: timm's peer refused them ("Input height (12)
    doesn't match model (8)") and the zoo model resized its positions on every forward."""
    speed_main(["vit_digits", "--vs-peers", "--img-size", "12", "--batch-size", "2", "--warmup", "0", "--rounds", "1",
                "--steps", "1", "--modes", "forward", "--no-memory", "--peak-size", "64", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    z, p = (next(r for r in rows if r["side"] == side) for side in ("zoo", "peer"))
    assert z["img_size"] == 12 and "no_peer" not in z and z["vs_peer"] > 0
    assert z["macs_per_sample"] == p["macs_per_sample"] and z["params"] == p["params"]


def test_zoo_and_peer_get_the_same_untimed_steps(monkeypatch):
    """The peer's step was run once before the timing (to leave out a peer that fails) and the zoo's was not: with
    --warmup 0 (or --compile) the zoo's first timed step carried a warm-up (its compilation) the peer had done."""
    import zoo.bench.speed as speed

    calls, before = {}, {}
    make_step, time_interleaved = speed.make_step, speed.time_interleaved

    def counted(wl, mode, *a, **k):
        fn = make_step(wl, mode, *a, **k)

        def step():
            calls[wl.label] = calls.get(wl.label, 0) + 1
            fn()
        return step

    def timed(*a, **k):
        before.update(calls)
        return time_interleaved(*a, **k)

    monkeypatch.setattr(speed, "make_step", counted)
    monkeypatch.setattr(speed, "time_interleaved", timed)
    opts = speed.SpeedOptions(batch_size=2, modes=("forward",), vs_peers=True, warmup=0, rounds=1, steps=1, memory=False,
                              peak_size=64)
    speed.bench_model("vit_digits", opts, 128, None)
    assert before == {"zoo.vit_digits": 1, "timm.VisionTransformer": 1}


@pytest.mark.parametrize("extra", [["--batch-size", "4"], ["--precision", "bf16"], ["--gradient-checkpointing"],
                                   ["--optimizer", "adamw_foreach"], ["--seq-lens", "64"]])
def test_goals_refuse_options_they_would_ignore(extra, monkeypatch):
    """--goals overwrote --batch-size, --seq-lens, --precision and --compile with the goal configurations without a
    word, and --gradient-checkpointing or another optimiser left the goals it prints empty or partial."""
    import zoo.bench.speed as speed

    def ran(*a, **k):
        raise AssertionError("the goal models were timed")

    monkeypatch.setattr(speed, "run_speed", ran)
    with pytest.raises(SystemExit, match=f"--goals runs the goal configurations.*drop {extra[0]}"):
        speed_main(["--goals", "bert_base", *extra])


def test_vs_fp32_does_not_depend_on_the_order_of_the_precisions(tmp_path):
    """--precision bf16,fp32 gave the bf16 rows no vs_fp32 (the ratio looked for an fp32 row not built yet)."""
    speed_main(["vit_digits", "--batch-size", "2", "--warmup", "0", "--rounds", "2", "--steps", "1", "--modes", "forward",
                "--precision", "bf16,fp32", "--no-memory", "--peak-size", "64", "--out", str(tmp_path)])
    rows = {r["precision"]: r for r in json.loads((tmp_path / "speed.json").read_text())["rows"]}
    assert rows["bf16"]["vs_fp32"] == pytest.approx(rows["fp32"]["median_ms"] / rows["bf16"]["median_ms"])
    assert rows["bf16"]["vs_fp32_ci"] == list(ratio_ci(rows["fp32"]["round_ms"], rows["bf16"]["round_ms"]))


def test_speed_cli_writes_a_table_with_peer_ratios(tmp_path, capsys):
    speed_main(["vit_digits", "--vs-peers", "--batch-size", "4", "--warmup", "1", "--rounds", "2", "--steps", "1",
                "--precision", "fp32,bf16", "--peak-size", "256", "--out", str(tmp_path), "--tag", "t"])
    data = json.loads((tmp_path / "speed_t.json").read_text())
    assert (tmp_path / "speed_t.csv").read_text().startswith("model,impl,side")
    zoo_rows = [r for r in data["rows"] if r["side"] == "zoo"]
    assert {(r["mode"], r["precision"]) for r in zoo_rows} == {(m, p) for m in ("forward", "train") for p in ("fp32", "bf16")}
    for r in zoo_rows:
        assert r["vs_peer"] > 0 and r["n_timed"] == 2 and r["peer"].startswith("timm")
        assert r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * 17)  # 16 patches + class token
        assert r["macs_per_sample"] == 2380928
        peer = next(q for q in data["rows"] if q["side"] == "peer" and (q["mode"], q["precision"]) == (r["mode"], r["precision"]))
        per_round = sorted(a / b for a, b in zip(peer["round_ms"], r["round_ms"]))  # 2 rounds of 1 step: the extremes
        assert r["vs_peer_ci"] == [pytest.approx(per_round[0]), pytest.approx(per_round[1]), pytest.approx(0.5)]
    assert data["machine"]["matmul_peak_gflops_fp32"] > 0
    for r in data["rows"]:  # float32 forward: utilisation against the sgemm timed in the same rounds, round by round
        if (r["mode"], r["precision"]) == ("forward", "fp32"):
            assert r["matmul_peak_interleaved"] and r["matmul_peak_gflops"] > 0
            assert r["utilisation"] == pytest.approx(r["achieved_gflops"] / r["matmul_peak_gflops"])
            low, high, _ = r["utilisation_ci"]
            assert low <= high and low > 0
        else:
            assert "utilisation" not in r and "matmul_peak_interleaved" not in r
    for r in data["rows"]:  # bf16 against fp32 of the same implementation, timed in the same interleaved rounds
        fp32 = next(q for q in data["rows"] if (q["impl"], q["mode"], q["precision"]) == (r["impl"], r["mode"], "fp32"))
        if r["precision"] == "bf16":
            assert r["vs_fp32"] == pytest.approx(fp32["median_ms"] / r["median_ms"])
        else:
            assert "vs_fp32" not in r
    m = data["machine"]  # which kernels ran bf16: the CPU's flags and oneDNN's own report
    assert "cpu_bf16_flags" in m and m["onednn_bf16_matmul"]
    if "avx512_bf16" in m["cpu_bf16_flags"] or "amx_bf16" in m["cpu_bf16_flags"]:
        # a bf16 kernel, not the reference one: oneDNN names it ..._bf16 (AVX-512-BF16) or ..._amx (AMX, oneDNN 3.7+)
        assert ("bf16" in m["onednn_bf16_matmul"] or "amx" in m["onednn_bf16_matmul"]) and m["onednn_isa"]
    out = capsys.readouterr().out
    assert "vs peer" in out and "vs fp32" in out and "bf16: cpu_bf16_flags" in out


def test_speed_times_optimisers_interleaved_and_goals_read_the_zoo_fit_one(tmp_path):
    speed_main(["vit_digits", "--vs-peers", "--batch-size", "4", "--warmup", "1", "--rounds", "2", "--steps", "1",
                "--modes", "train", "--optimizer", "adamw,adamw_foreach", "--no-memory", "--peak-size", "128",
                "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert {(r["side"], r["optimizer"]) for r in rows} == {(s, o) for s in ("zoo", "peer") for o in ("adamw", "adamw_foreach")}
    med = {(r["side"], r["optimizer"]): r["median_ms"] for r in rows}
    for r in rows:
        if r["optimizer"] == "adamw_foreach":  # against the first optimiser named, same implementation
            assert r["vs_optimizer"] == pytest.approx(med[(r["side"], "adamw")] / r["median_ms"])
            assert r["optimizer_baseline"] == "adamw"
        if r["side"] == "zoo":  # against the peer with the same optimiser
            assert r["vs_peer"] == pytest.approx(med[("peer", r["optimizer"])] / r["median_ms"])
    goal_rows = [dict(r, model="vit_small_patch16_224", batch=16) for r in rows]  # as if the goal configuration
    (goal,) = check_goals(goal_rows)
    assert goal["value"] == pytest.approx(next(r["vs_peer"] for r in rows if r["side"] == "zoo" and r["optimizer"] == "adamw"))


def test_bad_options_name_the_fix():
    with pytest.raises(SystemExit):
        speed_main(["vit_digits", "--precision", "fp16"])
    with pytest.raises(SystemExit, match="no registered model matches"):
        speed_main(["no_such_model*"])
    with pytest.raises(SystemExit, match=r"--goals: 'vit_digits' names none of the goal models \(vit_small_patch16_224, "):
        speed_main(["--goals", "vit_digits"])


def test_goals_patterns_pick_among_the_goal_models():
    from zoo.bench.cli import _goal_models

    goal_models = ["vit_small_patch16_224", "bert_base", "t5_small", "transformer_base"]
    assert _goal_models([], goal_models) == goal_models
    assert _goal_models(["t*", "bert_base", "t5_small"], goal_models) == ["t5_small", "transformer_base", "bert_base"]


def test_generation_bench_cache_gives_the_same_tokens():
    from zoo.bench.generation import bench_generation

    r = bench_generation("transformer_tiny", batch=1, src_len=6, new_tokens=4, rounds=1, warmup=0)
    assert r["same_tokens"] and r["speedup"] > 0 and r["n_timed"] == 1


def test_rounds_hit_by_outside_load_are_named():
    from zoo.bench.speed import disturbed_rounds

    quiet = {"zoo|fp32": [550.0, 560.0, 540.0, 545.0, 600.0], "peer|fp32": [570.0, 565.0, 580.0, 560.0, 575.0]}
    assert disturbed_rounds(quiet) == []
    # the goal run of 2026-12-07 while a test suite ran beside it: ViT-S forward, rounds 2-4
    hit = {"zoo|fp32": [558.0, 1534.0, 1410.0, 533.0, 547.0], "peer|fp32": [577.0, 957.0, 1612.0, 542.0, 559.0],
           "zoo|fp32+c": [585.0, 699.0, 1649.0, 1269.0, 546.0]}
    assert disturbed_rounds(hit) == [1, 2, 3]


@pytest.mark.parametrize("option, value", [("--rounds", "0"), ("--steps", "0"), ("--warmup", "-1"), ("--threads", "0"),
                                           ("--batch-size", "0")])
def test_speed_cli_refuses_counts_that_time_nothing(option, value, capsys):
    with pytest.raises(SystemExit) as e:
        speed_main(["vit_digits", option, value])
    assert e.value.code == 2 and f"argument {option}: must be an integer >= " in capsys.readouterr().err


def test_machine_info_records_the_code_revision():
    """Every bench result names the commit it measured (`git describe --dirty`), so a figure can be traced back."""
    import subprocess

    from zoo.bench.speed import machine_info

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    rev = machine_info()["git"]
    found = re.fullmatch(r"(?:.+-g)?([0-9a-f]{12,40})(-dirty)?", rev or "")  # a bare hash, or tag-N-gHASH
    assert found, rev
    assert head.stdout.strip().startswith(found.group(1))


def test_git_rev_reports_nothing_for_a_package_inside_another_repository(tmp_path, monkeypatch):
    """zoo installed into a folder of some other git repository must not report that repository's commit."""
    import subprocess

    import zoo.compare.runner as runner

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    pkg = tmp_path / "venv" / "site-packages"
    pkg.mkdir(parents=True)
    monkeypatch.setattr(runner, "ROOT", pkg)
    assert runner.git_rev() is None
    monkeypatch.setattr(runner, "ROOT", tmp_path / "not-a-folder")
    assert runner.git_rev() is None


def test_a_bench_never_writes_over_earlier_results(tmp_path, capsys, monkeypatch):
    """The default folder is the scratch runs/bench (not the published results/bench), and a second run with the
    same name takes the next free one: the first run's table is still there, byte for byte."""
    monkeypatch.chdir(tmp_path)
    args = ["vit_digits", "--batch-size", "2", "--warmup", "1", "--rounds", "1", "--steps", "1", "--modes", "forward",
            "--no-memory", "--peak-size", "64"]
    speed_main(args)
    first = (tmp_path / "runs" / "bench" / "speed.json").read_bytes()
    (tmp_path / "runs" / "bench" / "speed_2.csv").write_text("mine")  # a name taken by one file of the pair
    speed_main(args)
    assert (tmp_path / "runs" / "bench" / "speed.json").read_bytes() == first
    assert (tmp_path / "runs" / "bench" / "speed_2.csv").read_text() == "mine"
    assert json.loads((tmp_path / "runs" / "bench" / "speed_3.json").read_text())["rows"][0]["model"] == "vit_digits"
    assert "wrote runs/bench/speed_3.csv and .json" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()
