"""torch.compile over the registry: every family compiles as one graph (fullgraph=True) for inference and
for a training step, and with dynamic shapes a new batch size (and, for text, a new length) reuses the
compiled graph instead of recompiling (the recurrent families cannot yet: NOT_YET says why). The
`compile` switch of the tasks compiles in place, so checkpoints keep their plain keys.

The cases use backend "eager" (dynamo only: graph breaks and guards) and "aot_eager" (dynamo plus
AOTAutograd's forward and backward graphs) to stay fast; inductor's code generation is checked on two
families in a slow test. Each family runs at a small size of its own (one or two blocks): graph breaks and
guards do not depend on the depth."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import zoo
from zoo.contract import example_inputs
from zoo.registry import _entry

# family -> (a registered model, overrides that keep it small)
CASES = {
    "vit": ("vit_digits", {"depth": 1}),
    "deit": ("vit_mnist_distilled", {"depth": 1}),
    "deit3": ("deit3_mnist", {"depth": 1}),
    "vit_reg": ("vit_mnist_reg4", {"depth": 1}),
    "cait": ("cait_mnist", {"depth": 1, "class_depth": 1}),
    "swin": ("swin_mnist", {"depths": (2, 1)}),
    "eva": ("eva02_mnist", {"depth": 1}),
    "mae": ("mae_mnist", {"depth": 1, "decoder_depth": 1}),
    "bert": ("bert_tiny", {"depth": 1, "vocab_size": 500}),
    "t5": ("t5_tiny", {"num_layers": 1, "vocab_size": 500}),
    "transformer": ("transformer_numbers", {"num_encoder_layers": 1, "num_decoder_layers": 1, "vocab_size": 500}),
    "gpt": ("gpt2_tiny", {"depth": 1, "vocab_size": 500}),
    "llama": ("llama_tiny", {"depth": 1, "vocab_size": 500}),
    "clip": ("clip_tiny", {"vision_layers": 1, "text_layers": 1}),
    "captioner": ("vit_captioner_mnist", {"encoder_depth": 1, "depth": 1}),
    "recurrent": ("gru_seq2seq", {"vocab_size": 500}),
    "lstm_lm": ("lstm_lm", {"num_layers": 1, "vocab_size": 500}),
    "timm": ("timm_resnet18_mnist", {}),
}
# dynamo settings a family needs: nn.LSTM is a graph break unless allow_rnn (off by default)
DYNAMO_CONFIG = {"lstm_lm": {"allow_rnn": True}}
# families that cannot compile as one graph yet, and why: {family: (inference reason, training reason)}
RECURRENT = ("nn.GRU / nn.LSTM are graph breaks for dynamo by default (torch._dynamo.config.allow_rnn); with them "
             "allowed, the encoder's pack_padded_sequence (lengths read on the CPU) is a function dynamo refuses to "
             "trace, and the attention decoder's Python loop over target positions unrolls at every length")
NOT_YET = {
    "recurrent": (RECURRENT, RECURRENT),
    "lstm_lm": (None, "with allow_rnn the forward is one graph at any length and the training step one graph at fixed "
                      "shapes, but AOTAutograd decomposes the LSTM for its backward into a loop over time steps, which "
                      "specialises the sequence length (a recompilation at every new length)"),
}
# families whose training step is fast enough for every run (the others are marked slow)
FAST_TRAINING = {"vit", "gpt", "bert"}
SIZES = ((2, 8), (3, 12))  # (batch, text length): the second call must reuse the first call's graph


def inputs(model, batch: int, length: int) -> tuple[torch.Tensor, ...]:
    """The model's example inputs with the axes it declares dynamic (batch; length for text) marked so:
    dynamo raises if the model specialises one of them (e.g. branches on the batch size)."""
    ex = example_inputs(model, batch=batch, length=length, seed=batch)
    for name, axes in ex.dynamic.items():
        for dim in axes:
            torch._dynamo.mark_dynamic(ex.tensors[name], dim)
    return ex.args


def build(family: str):
    name, overrides = CASES[family]
    torch.manual_seed(0)
    return zoo.create_model(name, **overrides)


def first(out):
    """The tensor a loss reads: the first of a tuple (logits)."""
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_every_registered_family_has_a_compile_case():
    families = {_entry(n).family for n in zoo.list_models()}
    missing = sorted(families - set(CASES))
    assert not missing, f"add a small model of the families {missing} to CASES in tests/test_compile.py"
    for family, (name, _) in CASES.items():
        assert _entry(name).family == family


def cases(training: bool) -> list:
    out = []
    for f in sorted(CASES):
        reason = NOT_YET.get(f, (None, None))[training]
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        if training and f not in FAST_TRAINING:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(f, marks=marks))
    return out


def compile_over_sizes(family: str, training: bool, backend: str, check, dynamic: bool | None = None) -> None:
    """Compile the family's model (fullgraph) and run `check(model, compiled, args, batch)` at each of SIZES;
    the second size must reuse the first one's graph. dynamic=None marks the declared axes dynamic;
    dynamic=True is torch.compile's (every dimension symbolic, image sizes included)."""
    model = build(family).train(training)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, fullgraph=True, backend=counter, dynamic=dynamic)
    frames = []
    with torch._dynamo.config.patch(**DYNAMO_CONFIG.get(family, {})):
        for batch, length in SIZES:
            args = inputs(model, batch, length) if dynamic is None else example_inputs(model, batch, length, seed=batch).args
            check(model, compiled, args, batch)
            frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames[1] == frames[0], f"{family} recompiled for batch/length {SIZES[1]}: {frames}"


def check_inference(model, compiled, args, batch):
    # eager first: einops registers each new tensor type (nn.Parameter included) in a dict that dynamo
    # guards on, so a first eager einops call after compiling recompiles once, whatever the batch
    with torch.no_grad():
        ref = first(model(*args))
        out = first(compiled(*args))
    assert out.shape[0] == batch
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", cases(training=False))
def test_inference_compiles_as_one_graph_for_every_batch_and_length(family):
    compile_over_sizes(family, False, "eager", check_inference)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "t5", "gpt"])  # image, relative bias, causal cache: the rest are covered by declared dynamic axes above
def test_dynamic_true_compiles_once_for_every_batch_and_length(family):
    """torch.compile(dynamic=True) makes every dimension symbolic from the first call; still one graph."""
    compile_over_sizes(family, False, "eager", check_inference, dynamic=True)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", cases(training=True))
def test_training_step_compiles_as_one_graph_with_the_eager_gradients(family):
    def check(model, compiled, args, batch):
        grads = []
        for fn in (model, compiled):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(batch)  # the same dropout / drop-path draws in both
            first(fn(*args)).float().square().mean().backward()
            grads.append(_grads(model))
        eager, comp = grads
        assert eager and set(comp) == set(eager)
        for n in eager:
            torch.testing.assert_close(comp[n], eager[n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{family} grad {n}: {m}")

    compile_over_sizes(family, True, "aot_eager", check)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit"])  # inductor codegen is slow on CPU: one family in the suite, more by hand
def test_inductor_matches_eager(family):
    model = build(family).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for batch, length in SIZES:
        args = example_inputs(model, batch=batch, length=length, seed=batch).args
        with torch.no_grad():
            torch.testing.assert_close(first(compiled(*args)), first(model(*args)), atol=1e-4, rtol=1e-4)


# -- the tasks' switch ---------------------------------------------------------------------------------

def test_task_compile_switch_compiles_the_model_in_place():
    from zoo.tasks.image import ImageClassification

    task = ImageClassification("vit_digits", model_kwargs={"depth": 1}, compile=True, compile_backend="eager")
    keys = list(task.state_dict())
    task.configure_model()
    task.configure_model()  # idempotent
    assert task.model._compiled_call_impl is not None and list(task.state_dict()) == keys
    plain = ImageClassification("vit_digits", model_kwargs={"depth": 1})
    assert plain.hparams.compile is False
    plain.configure_model()
    assert plain.model._compiled_call_impl is None
    plain.load_state_dict(task.state_dict())
    x = example_inputs(task.model, batch=2).args[0]
    with torch.no_grad():
        torch.testing.assert_close(task.eval()(x), plain.eval()(x))


@pytest.mark.slow
def test_task_compile_switch_keeps_plain_checkpoint_keys(tmp_path):
    """`zoo fit --config configs/vit_digits.yaml --model.init_args.compile true`, two steps."""
    from zoo.cli import lightning_main

    cli = lightning_main(
        ["fit", "--config", "configs/vit_digits.yaml", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
         "--model.init_args.model_kwargs", "{depth: 1}",
         "--model.init_args.compile", "true", "--model.init_args.compile_backend", "aot_eager",
         "--trainer.default_root_dir", str(tmp_path),
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    )
    task = cli.model
    assert task.model._compiled_call_impl is not None  # compiled in place
    assert cli.trainer.global_step == 2
    ckpt = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and not any("_orig_mod" in k for k in keys), keys[:5]
    # the checkpoint loads into an uncompiled model and gives the trained model's outputs
    plain = zoo.create_model("vit_digits", pretrained=cli.trainer.checkpoint_callback.best_model_path, depth=1).eval()
    x = example_inputs(plain, batch=2).args[0]
    task.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), task.model(x))


@pytest.mark.slow
def test_task_compile_draws_the_dropout_masks_of_an_eager_run():
    """compile=True with inductor: a training-mode forward under a seed equals the eager one (same dropout masks,
    INDUCTOR_OPTIONS' fallback_random); with inductor's own generator (the option off) the masks differ."""
    from zoo.tasks.image import ImageClassification

    kwargs = {"depth": 1, "drop_rate": 0.2, "attn_drop_rate": 0.2}
    plain = ImageClassification("vit_digits", model_kwargs=kwargs).model.train()
    x = example_inputs(plain, batch=4).args[0]
    outs = {}
    for name, options in (("same masks", None), ("inductor's masks", {"fallback_random": False})):
        torch._dynamo.reset()
        task = ImageClassification("vit_digits", model_kwargs=kwargs, compile=True, compile_options=options)
        task.model.load_state_dict(plain.state_dict())
        task.configure_model()
        task.model.train()
        torch.manual_seed(7)
        outs[name] = task.model(x).detach()
    torch.manual_seed(7)
    eager = plain(x).detach()
    torch.manual_seed(8)
    assert not torch.allclose(plain(x), eager, atol=1e-3)  # the masks matter at this size
    torch.testing.assert_close(outs["same masks"], eager, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(outs["inductor's masks"], eager, atol=1e-3)


def test_task_refuses_compile_options_a_backend_does_not_take():
    from zoo.tasks.image import ImageClassification

    with pytest.raises(ValueError, match="compile_options are inductor's settings; backend 'aot_eager' takes none"):
        ImageClassification("vit_digits", compile=True, compile_backend="aot_eager",
                            compile_options={"fallback_random": True})


def test_task_refuses_an_unknown_compile_backend():
    from zoo.tasks.image import ImageClassification

    with pytest.raises(ValueError, match="compile_backend must be one of.*inductor.*got 'fast'"):
        ImageClassification("vit_digits", compile=True, compile_backend="fast")


def test_contrastive_task_compiles_the_towers_it_trains_through():
    from zoo.tasks.contrastive import ContrastiveTask

    task = ContrastiveTask("clip_tiny", compile=True, compile_backend="eager")
    task.configure_model()
    model = task.model
    assert model.visual._compiled_call_impl is not None and model.text._compiled_call_impl is not None
    images, ids, mask = example_inputs(model, batch=2, length=8).args
    with torch.no_grad():
        img = model.encode_image(images)  # through the compiled tower
    assert img.shape == (2, model.config.embed_dim)
