"""What every task shares: building the model by name, AdamW with sane decay groups, warm-up + cosine."""
from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from ..registry import accepted_overrides, create_model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, embeddings, positions and special tokens."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim <= 1 or name in skip or leaf in skip or "embed" in name or "token" in leaf:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# "adamw": torch's fused AdamW kernel where it takes every parameter (one pass over each parameter instead of the
# multi-tensor implementation's several), else torch's default; transformers' Trainer defaults to the fused kernel
# too. On a 2-core Xeon it made T5-small's / BERT-base's whole training step 1.10x / 1.18x faster in float32 and
# 1.21x / 1.24x in bf16 (`zoo bench speed t5_small bert_base --modes train --optimizer adamw,adamw_foreach`).
# "adamw_foreach": torch's default multi-tensor AdamW.
# Adafactor (Shazeer & Stern 2018) is T5's optimiser: its steps are relative to each parameter's RMS,
# which suits T5's unit-variance embeddings that AdamW's absolute steps barely move. It takes no betas.
OPTIMIZERS = ("adamw", "adamw_foreach", "adafactor")


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def make_optimizer(name: str, groups: list[dict], lr: float, betas: tuple[float, float],
                   allow_fused: bool = True) -> torch.optim.Optimizer:
    """The optimiser `name` over param groups. allow_fused=False keeps "adamw" multi-tensor (see `fused_allowed`)."""
    check_optimizer(name)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr)
    if name == "adamw" and allow_fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except RuntimeError:  # a parameter on a device without the fused kernel, or not floating point
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def fused_allowed(trainer) -> bool:
    """Whether the trainer can step a fused optimiser. Under a GradScaler (float16) a fused step would unscale the
    gradients itself: there "adamw" stays multi-tensor. bf16 autocast scales nothing, so a fused optimiser's
    gradients clip as in float32 (`ZooTask.configure_gradient_clipping`)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is None


def clip_unscaled(trainer, optimizer, clip_val, algorithm) -> bool:
    """Clip `optimizer`'s gradients where Lightning's MixedPrecision plugin would refuse to: a fused optimiser (it
    "unscales gradients internally", which only matters under a GradScaler) with no scaler, i.e. bf16 autocast;
    there the gradients are plain float32 and clip exactly as in a float32 run (Lightning's own Precision clipping).
    Returns whether it clipped."""
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision
    from lightning.pytorch.utilities import GradClipAlgorithmType

    plugin = getattr(trainer, "precision_plugin", None)
    if not (clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None
            and getattr(optimizer, "_step_supports_amp_scaling", False)):
        return False
    Precision.clip_gradients(plugin, optimizer, clip_val, GradClipAlgorithmType(algorithm or "norm"))
    return True


def content_generator(sample: torch.Tensor) -> torch.Generator:
    """A CPU generator seeded from one sample's values (its bytes, hashed): evaluation draws (MAE's masking noise,
    BERT's masks) made from it are the sample's own, whatever batch, batch size, process or epoch it comes in."""
    import hashlib

    data = sample.detach().contiguous().cpu().numpy().tobytes()
    seed = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then cosine decay to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# What `compile=True` (and `zoo bench speed --compile`) hands inductor. fallback_random: dropout draws its masks
# with ATen's generator, in eager's order, instead of inductor's in-kernel generator; so a compiled training step
# sees the same masks as an eager one of the same seed (compiling changes only rounding). On the CPU it was also a
# few percent faster (T5-small's step 1351 against 1377 ms): inductor stores its own masks as bool, a kernel 10x
# slower than ATen's there (scripts/profile_inductor_ops.py).
INDUCTOR_OPTIONS = {"fallback_random": True}


def compile_kwargs(backend: str = "inductor", options: dict | None = None) -> dict:
    """Keyword arguments of torch.compile / nn.Module.compile for `backend`: inductor gets INDUCTOR_OPTIONS
    updated with the user's `options` (inductor config names); other backends take no options."""
    if backend != "inductor":
        if options:
            raise ValueError(f"compile_options are inductor's settings; backend {backend!r} takes none (got {options})")
        return {"backend": backend}
    return {"backend": backend, "options": {**INDUCTOR_OPTIONS, **(options or {})}}


def check_compile_backend(name: str) -> None:
    import torch._dynamo

    backends = torch._dynamo.list_backends(exclude_tags=())
    if name not in backends:
        raise ValueError(f"compile_backend must be one of torch.compile's backends ({', '.join(backends)}), "
                         f"got {name!r}")


def _shard(task) -> None:
    """FSDP2 on the blocks of `task.model`, then on the model, when the strategy gave the task a device mesh."""
    mesh = getattr(task, "device_mesh", None)
    if mesh is None or getattr(task, "_zoo_sharded", False):
        return
    from torch.distributed.fsdp import fully_shard

    from ..core.blocks import find_blocks

    dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
    for block in find_blocks(task.model):
        fully_shard(block, mesh=dp_mesh)
    fully_shard(task.model, mesh=dp_mesh)
    task._zoo_sharded = True


class ZooTask(L.LightningModule):
    """Base LightningModule: holds `self.model` (a registered zoo model) and the optimiser recipe.

    `data_overrides` is filled from the data module by the CLI (number of classes, channels,
    vocabulary size, ...); `model_kwargs` are the user's own overrides and win.

    `compile=True` compiles the model's forward with torch.compile (`compile_backend`, e.g. "inductor",
    "aot_eager"; `compile_dynamic` as torch.compile's `dynamic`; `compile_options`: inductor's settings over
    INDUCTOR_OPTIONS, which keep dropout's masks those of an eager run) once the model is placed and sharded
    (configure_model). The module is compiled in place (nn.Module.compile), so checkpoints keep the
    plain state_dict keys and load into an uncompiled model.
    """

    # What `zoo test` logs (fnmatch patterns): `zoo compare` / `zoo bench tta` check a study's metric against it
    # before training; the recipe matrix test checks every recipe's logged names against it.
    test_metrics: tuple[str, ...] = ()
    # The range each logged metric lies in (fnmatch patterns, first match): `zoo compare` cuts a t-interval of the
    # mean over seeds at it (a mean accuracy of 0.998 +- 0.004 is reported as [0.994, 1], not [0.994, 1.002]).
    metric_ranges: tuple[tuple[str, tuple[float, float]], ...] = (
        ("*/acc", (0.0, 1.0)), ("*/zero_shot_acc", (0.0, 1.0)), ("*/exact_match", (0.0, 1.0)),
        ("*/exact_match/*", (0.0, 1.0)), ("*/bleu", (0.0, 1.0)), ("*/chrf", (0.0, 1.0)),  # torchmetrics: fractions
        ("*/loss", (0.0, math.inf)), ("*/ppl", (1.0, math.inf)))
    # Init arguments that read other runs' weights for training only (a pre-trained start, a teacher): `zoo test` /
    # `validate` / `predict` from a checkpoint, which holds every weight, set them to None, so evaluating a run
    # needs neither the runs it started from nor the folder they were in.
    training_sources: tuple[str, ...] = ("init_from",)
    # Init arguments that change how a model runs, not what it learned: `zoo test|validate|predict --ckpt_path X`
    # keep the user's values of these over the checkpoint's (Lightning puts the checkpoint's over all others).
    runtime_args: tuple[str, ...] = ("compile", "compile_backend", "compile_dynamic", "compile_options", "max_new_tokens",
                                     "num_beams", "do_sample", "temperature", "top_k", "top_p")

    def __init__(
        self,
        model: str,
        model_kwargs: dict | None = None,
        data_overrides: dict | None = None,
        pretrained: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int | float = 0.05,
        min_lr_ratio: float = 0.01,
        optimizer: str = "adamw",
        compile: bool = False,
        compile_backend: str = "inductor",
        compile_dynamic: bool | None = None,
        compile_options: dict | None = None,
    ):
        super().__init__()
        check_optimizer(optimizer)
        if compile:
            check_compile_backend(compile_backend)
            compile_kwargs(compile_backend, compile_options)  # refuses options a backend does not take
        self.save_hyperparameters()
        # the data module's facts where the model's config has the field; the user's model_kwargs always apply
        overrides = {**accepted_overrides(model, data_overrides or {}), **(model_kwargs or {})}
        self.model = create_model(model, pretrained=pretrained, **overrides)

    def configure_optimizers(self):
        hp = self.hparams
        opt = make_optimizer(hp.optimizer, self.param_groups(), hp.lr, tuple(hp.betas), allow_fused=fused_allowed(self.trainer))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_steps * total) if isinstance(hp.warmup_steps, float) else int(hp.warmup_steps)
        warmup = max(1, min(warmup, total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if not clip_unscaled(self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def param_groups(self) -> list[dict]:
        """What the optimiser trains; tasks with modules of their own besides the model add them here."""
        return param_groups(self.model, self.hparams.weight_decay)

    def configure_model(self):
        """Sharded training (Lightning's ModelParallelStrategy sets `device_mesh`): FSDP2 `fully_shard`
        on every block the model declares (`no_split_modules`, see zoo.core.find_blocks), then on the
        whole model. Without a mesh nothing is sharded. Then, with `compile=True`, torch.compile."""
        _shard(self)
        hp = getattr(self, "hparams", None) or {}
        if hp.get("compile") and not getattr(self, "_zoo_compiled", False):
            for module in self.compile_targets():
                module.compile(fullgraph=False, dynamic=hp.get("compile_dynamic"),
                               **compile_kwargs(hp.get("compile_backend", "inductor"), hp.get("compile_options")))
            self._zoo_compiled = True

    def compile_targets(self) -> list[nn.Module]:
        """The modules whose forward `compile=True` compiles: the model; tasks that train through other
        entry points (the towers of a dual encoder) name those."""
        return [self.model]

    def log_mean(self, name: str, value, weight: float | torch.Tensor = 1.0, **kwargs) -> None:
        """Log `name` as a mean over the whole evaluation split: `value` (a batch's mean, or one value per sample)
        weighted by `weight` (the batch's sample count; 1 for per-sample values), summed over all processes before
        dividing (a torchmetrics MeanMetric). Lightning's `self.log(..., sync_dist=True, batch_size=n)` averages the
        processes' sums and their integer sample counts, which truncates: the 179-sample digits validation split on 2
        processes gave val/loss 2.3197 against 2.3067 on one (without sync_dist it was process 0's half alone)."""
        from torchmetrics import MeanMetric

        if "_zoo_means" not in self._modules:
            self._zoo_means = nn.ModuleDict()
        key = name.replace(".", "_")
        if key not in self._zoo_means:
            self._zoo_means[key] = MeanMetric().to(self.device)
        metric = self._zoo_means[key]
        value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float32)
        metric.update(value.to(self.device), weight)
        self.log(name, metric, metric_attribute=f"_zoo_means.{key}", **kwargs)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at step {self.global_step}; lower the learning rate, "
                "enable gradient clipping (--trainer.gradient_clip_val 1.0) or use bf16 instead of fp16"
            )

    # -- the checkpoint describes itself (zoo.runs) ------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from ..runs import run_metadata

        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        checkpoint["zoo"] = run_metadata(self.model, self, dm, getattr(self, "_zoo_recipe", None))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse, in one line, a checkpoint whose stored model differs from the one this task built."""
        import dataclasses

        from ..runs import RunError, _plain

        record = checkpoint.get("zoo") or {}
        if not record:
            return
        name = getattr(self.model, "model_name", None)
        if record.get("model") != name:
            raise RunError(f"the checkpoint holds model {record.get('model')} but this recipe builds {name}; "
                           "pass the checkpoint's own recipe (or none: `zoo test --ckpt_path X` uses the stored one)")
        ours = _plain(dataclasses.asdict(self.model.config))
        differ = [f"{k}: checkpoint {v!r} vs recipe {ours.get(k)!r}" for k, v in record.get("config", {}).items()
                  if ours.get(k) != v]
        if differ:
            raise RunError(f"the checkpoint's {name} differs from the one this recipe builds ({'; '.join(differ[:5])}); "
                           "pass the checkpoint's own recipe, or the same model overrides and data settings")
        self._continue_best_checkpoints(checkpoint)

    def _continue_best_checkpoints(self, checkpoint: dict) -> None:
        """A resumed run writes into a version folder of its own; Lightning's ModelCheckpoint then forgets the best
        score of the run it continues (it restores its state only into the same folder), so the first validation
        after a resume became "best" however bad. The stored folder is renamed to this run's before the callbacks
        are restored: the best score, path and top-k carry over, and the files of the earlier run stay where they
        are (ModelCheckpoint deletes only files inside its own folder)."""
        trainer = getattr(self, "_trainer", None)
        states = checkpoint.get("callbacks") or {}
        for cb in (trainer.checkpoint_callbacks if trainer is not None else []):
            state = states.get(cb.state_key)
            if state and cb.dirpath and state.get("dirpath") and state["dirpath"] != cb.dirpath:
                state["dirpath"] = cb.dirpath
