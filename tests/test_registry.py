"""The registry's API and its errors, and safe weight loading."""
import pytest
import torch

import zoo
from zoo.registry import count_parameters
from zoo.weights import StateDictMismatch, load_state_dict_checked, save_safetensors


def test_list_models_wildcard_and_sorted():
    vits = zoo.list_models("vit_*")
    assert "vit_small_patch16_224" in vits and vits == sorted(vits)
    assert all(n.startswith("vit_") for n in vits)
    assert set(vits) <= set(zoo.list_models())
    assert zoo.list_models("no_such_*") == []


def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'vit_smal_patch16_224'.*vit_small_patch16_224"):
        zoo.create_model("vit_smal_patch16_224")


def test_unknown_override_names_accepted_ones():
    with pytest.raises(TypeError, match=r"does not accept colour.*accepted overrides:.*num_classes"):
        zoo.create_model("vit_mnist", colour=3)


def test_string_overrides_from_the_command_line_are_typed_by_the_config():
    """`--model.init_args.model_kwargs.dim 64` reaches create_model as the string '64'."""
    cfg = zoo.get_config("vit_mnist", dim="64", qk_norm="true", layer_scale="1e-5", pos_embed="rope", drop_path_rate="0.1")
    assert (cfg.dim, cfg.qk_norm, cfg.layer_scale, cfg.pos_embed, cfg.drop_path_rate) == (64, True, 1e-5, "rope", 0.1)
    assert type(cfg.dim) is int
    assert zoo.get_config("swin_mnist", depths="[1, 3]").depths == (1, 3)
    for bad in ({"dim": "abc"}, {"dim": "true"}, {"qk_norm": "maybe"}):
        with pytest.raises(ValueError, match=f"vit_mnist: {next(iter(bad))}='"):
            zoo.get_config("vit_mnist", **bad)


def test_model_info_counts_parameters_like_the_real_model():
    info = zoo.model_info("vit_mnist", depth=2)
    assert info["family"] == "vit" and info["config"]["depth"] == 2 and "Dosovitskiy" in info["paper"]
    assert info["params"] == count_parameters(zoo.create_model("vit_mnist", depth=2))


def test_register_rejects_duplicates_and_non_dataclass():
    with pytest.raises(ValueError, match="already registered"):
        zoo.register_model("vit_mnist", "vit", object, zoo.get_config("vit_mnist"), "paper")
    with pytest.raises(TypeError, match="dataclass"):
        zoo.register_model("new_model_x", "vit", object, {"dim": 3}, "paper")


def test_pretrained_safetensors_round_trip(tmp_path):
    model = zoo.create_model("vit_digits")
    path = tmp_path / "w.safetensors"
    save_safetensors(model, path)
    loaded = zoo.create_model("vit_digits", pretrained=str(path)).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_pretrained_torch_file_loads_weights_only(tmp_path):
    model = zoo.create_model("vit_digits")
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    loaded = zoo.create_model("vit_digits", pretrained=str(path))
    torch.testing.assert_close(loaded.head.weight, model.head.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        zoo.create_model("vit_digits", pretrained=str(tmp_path / "evil.pt"))


def test_missing_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoo.create_model("vit_digits", pretrained="nope.safetensors")


def test_state_dict_mismatch_lists_every_problem():
    model = zoo.create_model("vit_digits")
    sd = model.state_dict()
    sd.pop("pos_embed")
    sd["bogus.weight"] = torch.zeros(1)
    sd["head.weight"] = torch.zeros(3, 64)
    with pytest.raises(StateDictMismatch) as e:
        load_state_dict_checked(model, sd)
    msg = str(e.value)
    assert "missing (1): pos_embed" in msg and "unexpected (1): bogus.weight" in msg
    assert "head.weight: checkpoint (3, 64) vs model (10, 64)" in msg


def test_data_facts_reach_only_models_that_have_the_field():
    """A data module passes every model the same facts (bos_token_id, ...); T5 has no bos_token_id field."""
    from zoo.registry import accepted_overrides
    from zoo.tasks.text import Seq2Seq

    facts = {"vocab_size": 300, "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1, "decoder_start_token_id": 1}
    assert "bos_token_id" not in accepted_overrides("t5_tiny", facts)
    assert accepted_overrides("transformer_numbers", facts) == facts
    task = Seq2Seq(model="t5_tiny", data_overrides=facts)
    assert task.model.config.vocab_size == 300 and task.model.config.decoder_start_token_id == 1
    with pytest.raises(TypeError, match="t5_tiny does not accept bos_token_id"):  # the user's own kwargs are checked
        Seq2Seq(model="t5_tiny", model_kwargs={"bos_token_id": 1})


def test_an_unknown_override_of_a_shipped_tag_names_the_accepted_ones():
    import zoo

    with pytest.raises(TypeError, match="vit_mnist does not accept num_clases; accepted overrides: .*num_classes"):
        zoo.create_model("vit_mnist.mnist5k", num_clases=3)
    assert zoo.create_model("vit_mnist.mnist5k", num_classes="5").config.num_classes == 5  # a command-line string


def test_numeric_overrides_name_the_field():
    """depth=2.5 failed inside torch; depth=-1 and num_classes=-1 built broken models without a word."""
    for bad, match in (({"depth": 2.5}, "depth=2.5 is not an int"), ({"depth": True}, "depth=True is not an int"),
                       ({"depth": -1}, "depth=-1 is negative"), ({"num_classes": -1}, "num_classes=-1 is negative")):
        with pytest.raises(ValueError, match=f"vit_mnist: {match}"):
            zoo.create_model("vit_mnist", **bad)
    assert zoo.get_config("vit_mnist", num_classes=0, depth=2).num_classes == 0  # no head: still allowed
    assert zoo.get_config("swin_mnist", depths=(1, 1)).depths == (1, 1)


def test_an_unknown_family_is_named():
    assert "vit_mnist" in zoo.list_models(family="vit")
    with pytest.raises(ValueError, match=r"unknown family 'vits'. Did you mean: vit.*Known families: .*bert"):
        zoo.list_models(family="vits")


def test_features_only_keeps_what_the_weights_expect():
    """timm's features_only model keeps pretrained_cfg: resolve_data_config reads the tag's normalisation."""
    features = zoo.create_model("vit_mnist.mnist5k", pretrained=True, features_only=True)
    full = zoo.create_model("vit_mnist.mnist5k", pretrained=True)
    assert features.pretrained_cfg == full.pretrained_cfg and features.config == full.config
    assert zoo.resolve_data_config(features) == zoo.resolve_data_config(full)
    assert zoo.resolve_data_config(features)["mean"] == (0.1307,)


def test_reset_classifier_does_not_change_the_registered_config():
    """A model's config is its own: reset_classifier (which records num_classes in model.config) on one model
    changed the registered config, so every later create_model of that name built the new head size."""
    model = zoo.create_model("vit_mnist", depth=1)
    model.reset_classifier(3)
    assert model.config.num_classes == 3
    assert zoo.get_config("vit_mnist").num_classes == 10
    assert zoo.create_model("vit_mnist", depth=1).num_classes == 10
    plain = zoo.create_model("vit_mnist")
    plain.reset_classifier(0)
    assert zoo.create_model("vit_mnist").num_classes == 10 and zoo.model_info("vit_mnist")["config"]["num_classes"] == 10
    timm_cfg = zoo.get_config("timm_resnet18_mnist")
    timm_cfg.timm_kwargs["channels"] = (8, 8, 8, 8)  # nested fields are copies too
    assert zoo.get_config("timm_resnet18_mnist").timm_kwargs["channels"] == (32, 64, 128, 256)


@pytest.mark.parametrize("name,kw", [("vit_mnist", {"depth": 2}), ("swin_mnist", {}), ("clip_mnist", {})])
def test_features_only_model_takes_gradient_checkpointing(name, kw):
    """timm's feature wrappers have set_grad_checkpointing; zoo's FeatureExtractor had none (AttributeError). The
    maps and gradients are the same, and the blocks really run again in the backward pass."""
    torch.manual_seed(0)
    features = zoo.create_model(name, features_only=True, out_indices=[0, -1], **kw).train()
    x = torch.randn(2, features.model.config.in_chans, 28, 28)
    calls = []
    from zoo.core.blocks import find_blocks

    find_blocks(features.model)[0].register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation stops early

    def run():
        features.zero_grad()
        calls.clear()
        maps = features(x)
        sum(m.square().mean() for m in maps).backward()
        return [m.detach() for m in maps], [p.grad.clone() for p in features.parameters() if p.grad is not None], len(calls)

    maps, grads, runs = run()
    assert features.set_grad_checkpointing(True) >= 1
    maps2, grads2, runs2 = run()
    assert (runs, runs2) == (1, 2)
    torch.testing.assert_close(maps2, maps)
    torch.testing.assert_close(grads2, grads)
