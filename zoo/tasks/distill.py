"""Knowledge distillation (Hinton et al. 2015; DeiT, Touvron et al. 2021).

One loss serves every task: logits of shape (..., C) — (B, C) for image/text classification,
(B, T, V) for seq2seq — against the frozen teacher's logits of the same shape.

    soft:  (1 - alpha) · CE(student, y) + alpha · tau² · KL(softmax(teacher / tau) || softmax(student / tau))
    hard:  (1 - alpha) · CE(student, y) + alpha · CE(student, argmax teacher)
    none:  CE(student, y)

A DeiT student (`zoo.models.deit`) returns (class logits, distillation logits) while training: the
label term uses the first, the teacher term the second. The KL is averaged per position (Hinton's
"batchmean"), so tau² keeps the gradient scale independent of tau.

Feature hints (FitNets, Romero et al. 2015) add a dense signal to the logits: a student layer's
output, through a learned 1x1 projection to the teacher's channels, regresses a teacher layer's
output (`hint_loss`). Each position's features are layer-normalised first, which removes the scale
gap between a CNN's post-ReLU maps and a transformer's residual stream. The projections belong to
the task, not the student, so the student's checkpoint loads as the plain model.

The teacher is any registered zoo model, a zoo/Lightning checkpoint (its model name is read from
the checkpoint's hyper-parameters), or a timm model by name (`teacher: "timm:resnet18"`, weights
from `teacher_ckpt`). It is frozen, kept in eval mode and is not a sub-module of the task, so it is
neither optimised nor saved in the student's checkpoint; only its name and path are hyper-parameters.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..registry import accepted_overrides, create_model
from ..weights import load_state_dict_checked, read_state_dict
from .image import ImageClassification
from .text import Seq2Seq, SequenceClassification

MODES = ("soft", "hard", "none")


def distillation_loss(
    student: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    mode: str = "soft",
    alpha: float = 0.5,
    tau: float = 1.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> dict[str, torch.Tensor]:
    """{"loss", "student", "distill"}: the weighted total and its two terms (see the module doc).

    `labels` are class ids, or probabilities of shape (..., C) (mixup/cutmix targets). Positions
    whose label id is `ignore_index` (padding in seq2seq targets) count in neither term."""
    if mode not in MODES:
        raise ValueError(f"distillation mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha weights the teacher term and must lie in [0, 1], got {alpha}")
    if tau <= 0:
        raise ValueError(f"temperature tau must be positive, got {tau}")
    cls, dist = student if isinstance(student, (tuple, list)) else (student, student)
    num_classes = cls.shape[-1]
    soft_labels = labels.is_floating_point()
    cls, dist = cls.reshape(-1, num_classes), dist.reshape(-1, num_classes)
    labels = labels.reshape(-1, num_classes) if soft_labels else labels.reshape(-1)
    base = F.cross_entropy(cls, labels, ignore_index=ignore_index, label_smoothing=label_smoothing)
    if mode == "none" or alpha == 0.0:
        return {"loss": base, "student": base, "distill": torch.zeros_like(base)}
    if teacher_logits is None:
        raise ValueError(f"mode={mode!r} needs the teacher's logits")
    if teacher_logits.shape[-1] != num_classes or teacher_logits.numel() != dist.numel():
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match the student's {tuple(cls.shape)}; "
                         "teacher and student must predict the same classes / vocabulary")
    teacher_logits = teacher_logits.reshape(-1, num_classes).detach().float()
    if not soft_labels:  # probability targets have no padding
        keep = labels != ignore_index
        dist, teacher_logits = dist[keep], teacher_logits[keep]
    if mode == "soft":
        kd = F.kl_div(F.log_softmax(dist.float() / tau, -1), F.log_softmax(teacher_logits / tau, -1),
                      reduction="batchmean", log_target=True) * tau ** 2
    else:
        kd = F.cross_entropy(dist, teacher_logits.argmax(-1))
    return {"loss": (1 - alpha) * base + alpha * kd, "student": base, "distill": kd}


# --- feature hints ------------------------------------------------------------------------------

def feature_map(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """(B, C, H, W) from a convolutional feature map, or from a zoo ViT's tokens (B, prefix + H·W, C)."""
    if x.dim() == 4:
        return x
    if x.dim() == 3 and hasattr(model, "grid") and hasattr(model, "num_prefix"):
        h, w = model.grid
        return rearrange(x[:, model.num_prefix:], "b (h w) c -> b c h w", h=h, w=w)
    raise ValueError(f"a hint layer must output a (B, C, H, W) map or a zoo ViT's tokens, got shape {tuple(x.shape)} "
                     f"from {type(model).__name__}")


def hint_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the per-position layer-normalised features of two (B, C, H, W) maps with the same C;
    the finer map is average-pooled to the coarser grid."""
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"hint maps must agree in batch and channels after projection: {tuple(student.shape)} vs "
                         f"{tuple(teacher.shape)}")
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    s, t = (rearrange(F.adaptive_avg_pool2d(m.float(), size), "b c h w -> b (h w) c") for m in (student, teacher))
    return F.mse_loss(F.layer_norm(s, s.shape[-1:]), F.layer_norm(t.detach(), t.shape[-1:]))


def _module(model: nn.Module, name: str, side: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        sample = [n for n in modules if n and n.count(".") <= 2][:12]
        raise ValueError(f"the {side} has no module {name!r}; its modules are named like {sample}")
    return modules[name]


# --- teachers ----------------------------------------------------------------------------------

def load_teacher(teacher: str | None = None, teacher_ckpt: str | None = None, teacher_kwargs: dict | None = None,
                 data_overrides: dict | None = None, defaults: dict | None = None) -> nn.Module:
    """Build the frozen teacher in eval mode (see the module doc for the accepted forms).

    `data_overrides` (classes, channels, vocabulary) and `defaults` (e.g. a text task's head) apply
    where the teacher's config has such a field; `teacher_kwargs` win over both."""
    kwargs, data = dict(teacher_kwargs or {}), dict(data_overrides or {})
    if teacher is None and teacher_ckpt is None:
        raise ValueError("distillation needs a teacher: pass teacher=<zoo model name or 'timm:NAME'> and/or teacher_ckpt=<path>")
    if teacher_ckpt is not None:
        from ..rundir import resolve_checkpoint

        teacher_ckpt = resolve_checkpoint(teacher_ckpt)
        if not Path(teacher_ckpt).exists():
            raise FileNotFoundError(f"teacher checkpoint {teacher_ckpt!r} does not exist; train the teacher first "
                                    "(e.g. zoo fit --config configs/resnet_mnist_teacher.yaml)")
    if teacher is None:  # a checkpoint written by `zoo fit` describes its model: the one run loader
        from ..runs import load_run

        model = load_run(teacher_ckpt, kwargs or None).model
    else:
        if teacher.startswith("timm:"):
            kwargs = {"timm_name": teacher[len("timm:"):], **kwargs}
            teacher = "timm_resnet18"  # the generic timm wrapper; timm_name picks the network
        model = create_model(teacher, **{**accepted_overrides(teacher, {**data, **(defaults or {})}), **kwargs})
        if teacher_ckpt is not None:
            sd = read_state_dict(teacher_ckpt)
            convert = getattr(model, "checkpoint_filter_fn", None)  # e.g. a plain timm state dict for a timm wrapper
            load_state_dict_checked(model, convert(sd) if convert else sd)
    model.eval().requires_grad_(False)
    return model


class DistillationMixin:
    """Holds the teacher outside the module tree and computes the distillation loss."""

    # the teacher stays a source at evaluation: the feature hints' projections (weights of the checkpoint) are
    # shaped by its channels, so the task is built with it

    def _setup_distillation(self, teacher, teacher_ckpt, teacher_kwargs, distillation, alpha, tau, data_overrides, defaults=None):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), distillation, alpha, tau)  # validate
        self._teacher = [None]
        if distillation != "none" and (teacher or teacher_ckpt):
            self._teacher = [load_teacher(teacher, teacher_ckpt, teacher_kwargs, data_overrides, defaults)]
        if hasattr(self.model, "set_distilled_training"):
            self.model.set_distilled_training(True)

    def set_teacher(self, module: nn.Module) -> None:
        """Use an in-memory teacher (programmatic use); it is frozen and put in eval mode."""
        self._teacher = [module.eval().requires_grad_(False)]

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    @torch.no_grad()
    def teacher_logits(self, *args, **kwargs) -> torch.Tensor | None:
        t = self.teacher
        if t is None:
            return None
        p = next(t.parameters(), None)
        if p is not None and p.device != self.device:
            t.to(self.device)
        t.eval()
        return t(*args, **kwargs)

    def distill(self, student_out, teacher_logits, labels, ignore_index: int = -100, label_smoothing: float = 0.0,
                hint: torch.Tensor | None = None):
        hp = self.hparams
        parts = distillation_loss(student_out, teacher_logits, labels, hp.distillation, hp.alpha, hp.tau,
                                  label_smoothing=label_smoothing, ignore_index=ignore_index)
        loss = parts["loss"]
        self.log("train/loss_student", parts["student"])
        self.log("train/loss_distill", parts["distill"])
        if hint is not None:
            self.log("train/loss_hint", hint)
            loss = loss + hp.hint_weight * hint
        self.log("train/loss", loss, prog_bar=True)
        return loss


class ImageDistillation(DistillationMixin, ImageClassification):
    """Image classification with a teacher. With a DeiT student (`*_distilled`) the class head
    learns the labels and the distillation head the teacher; inference averages the two."""

    def __init__(self, model: str = "vit_mnist_distilled", teacher: str | None = None, teacher_ckpt: str | None = None,
                 teacher_kwargs: dict | None = None, distillation: str = "hard", alpha: float = 0.5, tau: float = 1.0,
                 hints: list[list[str]] | None = None, hint_weight: float = 1.0, **kwargs):
        """`hints`: [student module, teacher module] name pairs, e.g. [["encoder.blocks.2", "net.layer2"]],
        whose outputs `hint_loss` ties together with weight `hint_weight` (see the module doc)."""
        super().__init__(model, **kwargs)
        self._setup_distillation(teacher, teacher_ckpt, teacher_kwargs, distillation, alpha, tau, self.hparams.get("data_overrides"))
        self._setup_hints(hints or [], hint_weight)

    def _setup_hints(self, hints: list[list[str]], weight: float) -> None:
        self.hint_proj = nn.ModuleList()
        self._hint_out: dict[tuple[str, int], torch.Tensor] | None = None  # a dict only while capturing
        if not hints:
            return
        if self.teacher is None:
            raise ValueError("feature hints need a teacher; pass teacher and/or teacher_ckpt")
        if weight < 0:
            raise ValueError(f"hint_weight must be >= 0, got {weight}")
        for i, pair in enumerate(hints):
            if len(pair) != 2:
                raise ValueError(f"each hint is a [student module, teacher module] pair, got {pair!r}")
            for side, net, name in (("student", self.model, pair[0]), ("teacher", self.teacher, pair[1])):
                _module(net, name, side).register_forward_hook(
                    lambda mod, args, out, key=(side, i): self._keep(key, out))
        # one forward of a blank batch, in eval mode (BatchNorm statistics stay untouched), reads the channels
        cfg = self.model.config
        blank = torch.zeros(2, cfg.in_chans, cfg.img_size, cfg.img_size)
        was_training = self.model.training
        with torch.no_grad(), self._capturing():
            self.model.eval()(blank)
            self.teacher(blank)
            self.model.train(was_training)
            for i in range(len(hints)):
                s, t = self.hint_maps(i)
                self.hint_proj.append(nn.Conv2d(s.shape[1], t.shape[1], 1))

    def _keep(self, key: tuple[str, int], out: torch.Tensor) -> None:
        if self._hint_out is not None:  # outside training_step (evaluation, prediction) nothing is kept
            self._hint_out[key] = out

    @contextlib.contextmanager
    def _capturing(self):
        self._hint_out = {}
        try:
            yield
        finally:
            self._hint_out = None

    def hint_maps(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return feature_map(self._hint_out[("student", i)], self.model), feature_map(self._hint_out[("teacher", i)], self.teacher)

    def hint_term(self) -> torch.Tensor:
        """The summed hint losses of the forward passes just captured."""
        total = 0.0
        for i, proj in enumerate(self.hint_proj):
            s, t = self.hint_maps(i)
            total = total + hint_loss(proj(s), t)
        return total

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        if len(self.hint_proj):
            groups.append({"params": list(self.hint_proj.parameters()), "weight_decay": self.hparams.weight_decay})
        return groups

    def training_step(self, batch, batch_idx):
        images, labels, smoothing = self.mix(*batch)  # with mixup the teacher labels the mixed images too
        with self._capturing():
            student, teacher = self.model(images), self.teacher_logits(images)
            hint = self.hint_term() if len(self.hint_proj) else None
        return self.distill(student, teacher, labels, label_smoothing=smoothing, hint=hint)


class TextDistillation(DistillationMixin, SequenceClassification):
    """Text (pair) classification with a teacher, e.g. bert_base -> bert_tiny on configs/bert_pairs.yaml.
    A BERT teacher gets the classification head ("cls") unless teacher_kwargs say otherwise."""

    def __init__(self, model: str = "bert_tiny", teacher: str | None = None, teacher_ckpt: str | None = None,
                 teacher_kwargs: dict | None = None, distillation: str = "soft", alpha: float = 0.5, tau: float = 2.0,
                 **kwargs):
        super().__init__(model, **kwargs)
        self._setup_distillation(teacher, teacher_ckpt, teacher_kwargs, distillation, alpha, tau,
                                 self.hparams.get("data_overrides"), defaults={"head": self.head})

    def training_step(self, batch, batch_idx):
        inputs = self._model_inputs(batch)
        return self.distill(self.model(**inputs), self.teacher_logits(**inputs), batch["labels"],
                            label_smoothing=self.hparams.label_smoothing)


class Seq2SeqDistillation(DistillationMixin, Seq2Seq):
    """Word-level distillation of an encoder-decoder: per target position, the student matches the
    teacher's next-token distribution under teacher forcing (padding, label -100, is ignored).
    Teacher and student must share the tokenizer."""

    def __init__(self, model: str = "transformer_tiny", teacher: str | None = None, teacher_ckpt: str | None = None,
                 teacher_kwargs: dict | None = None, distillation: str = "soft", alpha: float = 0.5, tau: float = 1.0,
                 **kwargs):
        super().__init__(model, **kwargs)
        self._setup_distillation(teacher, teacher_ckpt, teacher_kwargs, distillation, alpha, tau,
                                 self.hparams.get("data_overrides"))

    def training_step(self, batch, batch_idx):
        from ..generation import shift_right

        cfg = self.model.config
        decoder_input_ids = shift_right(batch["labels"], cfg.decoder_start_token_id, cfg.pad_token_id)
        mask = batch.get("attention_mask")
        teacher = self.teacher_logits(batch["input_ids"], decoder_input_ids, attention_mask=mask) if self.teacher else None
        return self.distill(self(batch), teacher, batch["labels"], label_smoothing=self.hparams.label_smoothing)
