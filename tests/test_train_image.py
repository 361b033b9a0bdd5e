"""The training slice: CLI smoke run, data splits, and a short run that must learn."""
import csv

import numpy as np
import pytest
import torch

from zoo.cli import lightning_main
from zoo.data.images import MNIST5k, random_affine, stratified_split
from zoo.tasks.base import ZooTask, make_optimizer, param_groups, warmup_cosine


def test_mnist5k_split_is_fixed_stratified_and_disjoint():
    dm = MNIST5k()
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 3600, "val": 400, "test": 1000}
    test_labels = dm.splits["test"].tensors[1]
    assert torch.bincount(test_labels).tolist() == [100] * 10
    # the same seed gives the same split; train and test never share an image
    labels = np.repeat(np.arange(10), 500)
    a = stratified_split(labels, (0.2, 0.08, 0.72), seed=0)
    b = stratified_split(labels, (0.2, 0.08, 0.72), seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not set(a[0]) & set(a[2])



def test_stratified_split_puts_every_index_in_one_part():
    """Fractions that add up to 1 cover every index once; rounding each part alone dropped some (1 of a class of 5 at
    0.1 / 0.9, 2 of sklearn's digits), and the earlier parts stay as they were (the test split the shipped tags
    measured)."""
    labels = np.repeat(np.arange(3), [5, 7, 13])
    for fractions in [(0.1, 0.9), (0.2, 0.1, 0.7), (0.5, 0.5)]:
        parts = stratified_split(labels, fractions, seed=0)
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels))), fractions
    from zoo.data.images import Digits, load_digits8

    dm = Digits()
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 1259, "val": 179, "test": 359}
    assert sum(len(v) for v in dm.splits.values()) == len(load_digits8()[1])
    subset = stratified_split(np.repeat(np.arange(2), 10), (0.3,), seed=0)[0]  # a fraction alone: a subset
    assert len(subset) == 6


def test_random_affine_keeps_shape_and_identity_when_disabled():
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert random_affine(x, 0.1, 10, (0.9, 1.1)).shape == x.shape
    # the identity grid lands on pixel centres only up to float32 rounding (~1e-7 of the side), which
    # bilinear interpolation turns into errors of ~1e-5 between neighbouring N(0,1) pixels
    torch.testing.assert_close(random_affine(x, 0.0, 0.0, (1.0, 1.0)), x, atol=1e-4, rtol=0)


def test_warmup_cosine_schedule_shape():
    assert warmup_cosine(0, 10, 100, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, 0.01) == pytest.approx(0.01)


def test_no_weight_decay_on_norms_biases_positions_and_tokens():
    import zoo

    model = zoo.create_model("vit_digits")
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "encoder.norm.weight", "head.bias"} <= skipped or {"pos_embed", "head.bias"} <= skipped
    assert all(names[id(p)].endswith("weight") and p.ndim == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_adafactor_steps_scale_with_the_parameter_rms():
    """Adafactor's first step is lr x RMS(param) in RMS (gradient clipped to d=1); AdamW's is lr, whatever the scale.
    That is why T5's unit-variance embeddings train under Adafactor (configs/t5_numbers.yaml)."""
    torch.manual_seed(0)
    for scale in (1.0, 10.0):
        w = torch.nn.Parameter(torch.randn(64, 32) * scale)
        before = w.detach().clone()
        opt = make_optimizer("adafactor", [{"params": [w], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.999))
        w.grad = torch.randn_like(w)
        opt.step()
        step_rms = (w.detach() - before).pow(2).mean().sqrt().item()
        assert step_rms == pytest.approx(1e-2 * before.pow(2).mean().sqrt().item(), rel=0.05)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        ZooTask("vit_digits", optimizer="lion")


def test_adamw_is_fused_where_torch_has_the_kernel_and_steps_as_adamw():
    """"adamw" is torch's fused kernel on the CPU (one pass per parameter), "adamw_foreach" the multi-tensor default;
    both take AdamW's step: on the first step m/sqrt(v) = g/|g|, so p1 = p0 (1 - lr wd) - lr g / (|g| + eps)."""
    torch.manual_seed(0)
    lr, wd = 1e-2, 0.1
    for name, fused in (("adamw", True), ("adamw_foreach", False)):
        w = torch.nn.Parameter(torch.randn(64, 32))
        p0, g = w.detach().clone(), torch.randn(64, 32)
        opt = make_optimizer(name, [{"params": [w], "weight_decay": wd}], lr=lr, betas=(0.9, 0.999))
        assert bool(opt.param_groups[0]["fused"]) is fused, name
        w.grad = g.clone()
        opt.step()
        torch.testing.assert_close(w.detach(), p0 * (1 - lr * wd) - lr * g / (g.abs() + 1e-8), rtol=1e-5, atol=1e-6)
    w = torch.nn.Parameter(torch.randn(4))
    assert not make_optimizer("adamw", [{"params": [w]}], lr=lr, betas=(0.9, 0.999), allow_fused=False).param_groups[0]["fused"]


@pytest.mark.parametrize("setting, fused", [({"precision": "bf16-mixed"}, True), ({"precision": "32-true"}, True),
                                            ({"precision": "32-true", "gradient_clip_val": 1.0}, True),
                                            ({"precision": "bf16-mixed", "gradient_clip_val": 1.0}, True), ("fp16", False)])
def test_the_task_optimiser_is_fused_where_lightning_can_step_and_clip_it(tmp_path, setting, fused):
    """A float16 GradScaler would have a fused optimiser unscale: that training keeps the multi-tensor AdamW. bf16 with
    clipping steps the fused one (the task clips where Lightning's plugin refuses to). Two steps of each setting run."""
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision

    if setting == "fp16":  # a GPU's float16 AMP with its GradScaler, on the CPU
        setting = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
    from zoo.data.images import Digits
    from zoo.tasks.image import ImageClassification

    task = ImageClassification("vit_digits")
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, limit_val_batches=0,
                        enable_progress_bar=False, default_root_dir=tmp_path, **setting)
    trainer.fit(task, datamodule=Digits(batch_size=16))
    assert bool(trainer.optimizers[0].param_groups[0]["fused"]) is fused


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_bf16_clips_a_fused_optimisers_gradients_as_float32_does(algorithm):
    """Lightning's MixedPrecision plugin refuses to clip a fused optimiser's gradients; under bf16 (no GradScaler)
    the task clips them itself, to exactly what torch's clip_grad_norm_ / clip_grad_value_ give."""
    import lightning as L

    from zoo.tasks.base import clip_unscaled, make_optimizer

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]
    grads = [torch.randn(8, 4) * 3, torch.randn(4) * 3]
    clip = torch.nn.utils.clip_grad_norm_ if algorithm == "norm" else torch.nn.utils.clip_grad_value_
    refs = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for r, g in zip(refs, grads):
        r.grad = g.clone()
    clip(refs, 1.0)
    opt = make_optimizer("adamw", [{"params": params}], lr=1e-3, betas=(0.9, 0.999))
    assert opt.param_groups[0]["fused"]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    bf16 = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    assert clip_unscaled(bf16, opt, 1.0, algorithm)
    for p, r in zip(params, refs):
        torch.testing.assert_close(p.grad, r.grad)
    if algorithm == "norm":
        assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])) == pytest.approx(1.0, rel=1e-5)
    # float32 (Lightning clips itself), no clipping asked, or a multi-tensor optimiser: left to Lightning
    fp32 = L.Trainer(accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False)
    assert not clip_unscaled(fp32, opt, 1.0, algorithm) and not clip_unscaled(bf16, opt, None, algorithm)
    foreach = make_optimizer("adamw_foreach", [{"params": params}], lr=1e-3, betas=(0.9, 0.999))
    assert not clip_unscaled(bf16, foreach, 1.0, algorithm)


def test_short_training_run_learns(tmp_path):
    """Three epochs of a 2-layer ViT on MNIST-5k: far above the 10% of chance."""
    cli = lightning_main(
        ["fit", "--config", "configs/vit_mnist.yaml", "--trainer.max_epochs", "3", "--model.init_args.compile", "false",
         "--model.init_args.model_kwargs", "{depth: 2, dim: 64, num_heads: 4}", "--model.init_args.lr", "3e-3",
         "--data.init_args.augment", "false",
         "--trainer.default_root_dir", str(tmp_path),
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    )
    acc = cli.trainer.callback_metrics["test/acc"].item()
    assert acc > 0.5, f"test accuracy {acc:.3f} after 3 epochs (chance is 0.1)"
    metrics = list(csv.DictReader(open(tmp_path / "version_0" / "metrics.csv")))
    assert any(r.get("train/loss") for r in metrics) and any(r.get("val/acc") for r in metrics)
    # the checkpoint written by the run loads for inference through the registry
    import zoo

    ckpt = cli.trainer.checkpoint_callback.best_model_path
    model = zoo.create_model("vit_mnist", pretrained=ckpt, depth=2, dim=64, num_heads=4).eval()
    x, y = cli.datamodule.splits["test"].tensors
    with torch.no_grad():
        assert (model(x[:200]).argmax(-1) == y[:200]).float().mean() > 0.5


def test_a_split_into_fractions_summing_to_one_uses_every_sample():
    """Each part's count was rounded on its own: 2 of scikit-learn's 1,797 digits were in no split, and a folder
    class of 25 images split 10% / 90% lost one (round(2.5) + round(22.5) = 24)."""
    from zoo.data.images import Digits

    dm = Digits()
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 1259, "val": 179, "test": 359}  # test and val as before
    val, train = stratified_split(np.zeros(25, dtype=np.int64), (0.1, 0.9), seed=0)
    assert len(val) == 2 and sorted([*val, *train]) == list(range(25))
    part = stratified_split(np.repeat(np.arange(10), 36), (0.1,), seed=0)[0]  # a fraction alone stays a fraction
    assert len(part) == 40
