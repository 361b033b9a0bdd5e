"""`zoo viz`: figures of what a model attends to, written as PNG (matplotlib, Agg backend).

    zoo viz attention  --ckpt runs/vit_mnist/.../last.ckpt --out attn.png   # per-head maps + rollout, one image
    zoo viz cross-attention --ckpt runs/caption_mnist/.../last.ckpt        # decoder tokens x encoder positions
    zoo viz cross-attention --ckpt runs/<translation>/last.ckpt --tokenizer DIR --text "a source sentence"
    zoo viz positions  --length 64 --dim 128                                # the sinusoidal encoding matrix
    zoo viz clip-similarity --ckpt runs/clip_mnist/.../last.ckpt           # test images x held-out prompts
Every command also takes `--model NAME` (random weights) instead of `--ckpt`.

The numbers behind the figures come from functions that tests check: `vit_attentions`
(softmax rows), `attention_rollout` (Abnar & Zuidema 2020), `cross_attentions`,
`sinusoidal_table` and `clip_similarity`.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from .core import TransformerBlock, sinusoidal_table

# -- capturing attention probabilities --------------------------------------------------------


@contextlib.contextmanager
def record_attention(blocks: list[TransformerBlock]):
    """Run `blocks` with need_weights=True (plain softmax path) so that each block's attention
    modules keep their probabilities in `.last_weights`; nothing in the model changes."""

    def force(module, args, kwargs):
        return args, {**kwargs, "need_weights": True}

    handles = [b.register_forward_pre_hook(force, with_kwargs=True) for b in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def find_vit(model: nn.Module) -> nn.Module:
    """The VisionTransformer inside a model (itself, CLIP's `.visual`, a captioner's `.encoder`)."""
    from .models.vit import VisionTransformer

    for m in model.modules():
        if isinstance(m, VisionTransformer):
            return m
    raise TypeError(f"{type(model).__name__} holds no zoo VisionTransformer; pass a ViT, CLIP or captioner model")


@torch.no_grad()
def vit_attentions(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Self-attention probabilities of every ViT layer: a list of (B, H, N, N), N = prefix + patches."""
    vit = find_vit(model)
    blocks = list(vit.encoder.blocks)
    was_training = vit.training
    vit.eval()
    try:
        with record_attention(blocks):
            vit.forward_features(images)
    finally:
        vit.train(was_training)
    return [b.attn.last_weights for b in blocks]


def attention_rollout(attentions: list[torch.Tensor], residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): average the heads, add the identity for the
    residual path and renormalise, then multiply layer by layer. (B, N, N); rows sum to 1."""
    rollout = None
    for a in attentions:
        a = a.mean(dim=1)
        if residual:
            a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def decoder_cross_blocks(model: nn.Module) -> list[TransformerBlock]:
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock) and m.cross_attn is not None]
    if not blocks:
        raise TypeError(f"{type(model).__name__} has no cross-attention blocks; pass an encoder-decoder model")
    return blocks


@torch.no_grad()
def cross_attentions(model: nn.Module, inputs: torch.Tensor, decoder_input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Cross-attention probabilities of every decoder layer, (B, H, T, S), for teacher-forced
    `decoder_input_ids`. Works on any zoo encoder-decoder (encode/decode contract)."""
    blocks = decoder_cross_blocks(model)
    was_training = model.training
    model.eval()
    try:
        memory = model.encode(inputs) if attention_mask is None else model.encode(inputs, attention_mask=attention_mask)
        with record_attention(blocks):
            model.decode(decoder_input_ids, memory, memory_mask=attention_mask)
    finally:
        model.train(was_training)
    return [b.cross_attn.last_weights for b in blocks]


@torch.no_grad()
def clip_similarity(model: nn.Module, images: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B_images, B_texts) = exp(logit_scale) * normalised image features @ normalised text features.T"""
    was_training = model.training
    model.eval()
    try:
        return model.scale() * model.encode_image(images) @ model.encode_text(input_ids, attention_mask).T
    finally:
        model.train(was_training)


# -- loading ----------------------------------------------------------------------------------


def load_checkpoint_model(path: str | Path) -> tuple[nn.Module, dict]:
    """(model, checkpoint) from a `zoo fit` checkpoint: the task's hyper-parameters name the model
    and its overrides. Loaded with weights_only=True (no code runs)."""
    from .registry import create_model
    from .weights import load_state_dict_checked, read_state_dict

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters") or {}
    if "model" not in hp:
        raise ValueError(f"{path} has no hyper_parameters.model; pass a checkpoint written by `zoo fit` or use --model NAME")
    model = create_model(hp["model"], **{**(hp.get("data_overrides") or {}), **(hp.get("model_kwargs") or {})})
    load_state_dict_checked(model, read_state_dict(path))
    return model.eval(), ckpt


def checkpoint_tokenizer(ckpt: dict, directory: str | None = None, ckpt_path: str | None = None):
    """The tokenizer of a run: --tokenizer DIR, else the one stored in the checkpoint (multimodal
    recipes), else a `tokenizer/` folder next to the checkpoint or above it (text recipes save one)."""
    from .data.tokenizers import load_tokenizer

    if directory:
        return load_tokenizer(directory)
    if "tokenizer_json" in ckpt:
        from .data.multimodal import tokenizer_from_state

        return tokenizer_from_state(ckpt["tokenizer_json"])
    if ckpt_path:
        for parent in list(Path(ckpt_path).resolve().parents)[:4]:
            if (parent / "tokenizer" / "tokenizer.json").is_file():
                return load_tokenizer(parent / "tokenizer")
    raise ValueError("found no tokenizer for this checkpoint; pass --tokenizer DIR (a folder written by save_tokenizer)")


def mnist_test_images(per_class: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` test images of each digit (normalised as in training), sorted by digit."""
    from .data.images import MNIST5k

    dm = MNIST5k()
    dm.setup()
    x, y = dm.splits["test"].tensors
    idx = torch.cat([(y == d).nonzero().flatten()[:per_class] for d in range(10)])
    return x[idx], y[idx]


# -- plotting ---------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return out


def _show_image(ax, image: torch.Tensor):
    ax.imshow(image[0].cpu() if image.shape[0] == 1 else rearrange(image.cpu(), "c h w -> h w c"), cmap="gray")
    ax.axis("off")


def plot_vit_attention(model: nn.Module, image: torch.Tensor, out: str | Path, title: str = "") -> Path:
    """Row 1: the image and the class token's attention per head in the last layer; row 2: rollout."""
    plt = _plt()
    vit = find_vit(model)
    atts = vit_attentions(model, image[None])
    prefix = vit.num_prefix
    h, w = image.shape[-2:]
    grid = (h // vit.config.patch_size, w // vit.config.patch_size)
    last = atts[-1][0]  # (H, N, N)
    query = 0 if prefix else None  # class token, else the mean over patches
    heads = last.shape[0]
    fig, axes = plt.subplots(2, heads + 1, figsize=(2.2 * (heads + 1), 4.6))
    _show_image(axes[0, 0], image)
    axes[0, 0].set_title("input")
    for i in range(heads):
        row = last[i, query, prefix:] if query is not None else last[i, prefix:, prefix:].mean(0)
        axes[0, i + 1].imshow(row.reshape(grid).cpu(), cmap="inferno")
        axes[0, i + 1].set_title(f"last layer, head {i}", fontsize=9)
        axes[0, i + 1].axis("off")
    roll = attention_rollout(atts)[0]
    rrow = roll[0, prefix:] if prefix else roll[prefix:, prefix:].mean(0)
    _show_image(axes[1, 0], image)
    axes[1, 1].imshow(rrow.reshape(grid).cpu(), cmap="inferno")
    axes[1, 1].set_title(f"rollout, {len(atts)} layers")
    axes[1, 2].imshow(image[0].cpu(), cmap="gray")
    axes[1, 2].imshow(torch.nn.functional.interpolate(rrow.reshape(1, 1, *grid), size=(h, w), mode="bilinear")[0, 0].cpu(),
                      cmap="inferno", alpha=0.6)
    axes[1, 2].set_title("rollout over image")
    for ax in axes[1, 1:]:
        ax.axis("off")
    query_name = "the class token" if prefix else "all patches, averaged (no class token)"
    fig.suptitle((title + "; " if title else "") + f"attention from {query_name}")
    return _save(fig, out)


def plot_cross_attention(weights: torch.Tensor, src_labels: list[str], tgt_labels: list[str], out: str | Path,
                         title: str = "") -> Path:
    """(T, S) alignment matrix: which source position each target token reads."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.45 * len(src_labels) + 2, 0.45 * len(tgt_labels) + 1.5))
    ax.imshow(weights.cpu(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(src_labels)), src_labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tgt_labels)), tgt_labels, fontsize=8)
    ax.set_xlabel("encoder position")
    ax.set_ylabel("decoder token")
    ax.set_title(title or "cross-attention (mean over heads, last layer)")
    return _save(fig, out)


def plot_caption_attention(model: nn.Module, image: torch.Tensor, token_ids: list[int], tokens: list[str], out, title=""):
    """For each generated token, the last decoder layer's cross-attention over the image patches."""
    plt = _plt()
    vit = find_vit(model)
    ids = torch.tensor([token_ids])
    att = cross_attentions(model, image[None], ids)[-1][0].mean(0)  # (T, S)
    prefix, grid = vit.num_prefix, vit.grid
    n = len(tokens)
    fig, axes = plt.subplots(1, n + 1, figsize=(1.9 * (n + 1), 2.4))
    _show_image(axes[0], image)
    axes[0].set_title("input")
    h, w = image.shape[-2:]
    for i in range(n):
        amap = att[i, prefix:].reshape(1, 1, *grid)
        axes[i + 1].imshow(image[0].cpu(), cmap="gray")
        axes[i + 1].imshow(torch.nn.functional.interpolate(amap, size=(h, w), mode="bilinear")[0, 0].cpu(), cmap="inferno", alpha=0.6)
        axes[i + 1].set_title(repr(tokens[i]), fontsize=8)
        axes[i + 1].axis("off")
    fig.suptitle(title or "cross-attention over the image while predicting each token (last layer, mean over heads)")
    return _save(fig, out)


def plot_positions(length: int, dim: int, out: str | Path) -> Path:
    plt = _plt()
    table = sinusoidal_table(length, dim)
    fig, ax = plt.subplots(figsize=(7, 4))
    im = ax.imshow(table.T, cmap="RdBu", aspect="auto", vmin=-1, vmax=1)
    ax.set_xlabel("position")
    ax.set_ylabel("dimension (sin on even, cos on odd)")
    ax.set_title(f"sinusoidal position encoding, {length} positions x {dim} dims")
    fig.colorbar(im, ax=ax)
    return _save(fig, out)


def plot_similarity(sim: torch.Tensor, images: torch.Tensor, texts: list[str], out: str | Path, title: str = "") -> Path:
    plt = _plt()
    n_img, n_txt = sim.shape
    fig = plt.figure(figsize=(1.0 + 0.7 * n_txt, 1.6 + 0.7 * n_img))
    ax = fig.add_axes([0.12, 0.3, 0.85, 0.62])
    ax.imshow(sim.cpu(), cmap="viridis")
    for i in range(n_img):
        for j in range(n_txt):
            ax.text(j, i, f"{sim[i, j]:.0f}", ha="center", va="center", color="w", fontsize=7)
    ax.set_xticks(range(n_txt), texts, rotation=60, ha="right", fontsize=7)
    ax.set_yticks([])
    for i in range(n_img):  # the images as row labels
        sub = ax.inset_axes([-0.08, 1 - (i + 1) / n_img, 0.07, 1 / n_img])
        _show_image(sub, images[i])
    ax.set_title(title or "CLIP: exp(logit_scale) x cosine similarity")
    return _save(fig, out)


# -- the command --------------------------------------------------------------------------------


def _model_from_args(args) -> tuple[nn.Module, dict]:
    if args.ckpt:
        return load_checkpoint_model(args.ckpt)
    if not args.model:
        raise SystemExit("pass --ckpt PATH (a `zoo fit` checkpoint) or --model NAME")
    from .registry import create_model

    return create_model(args.model).eval(), {}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zoo viz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["attention", "cross-attention", "positions", "clip-similarity"])
    p.add_argument("--ckpt", help="checkpoint written by `zoo fit`")
    p.add_argument("--model", help="registered model name (random weights) when no --ckpt")
    p.add_argument("--out", help="PNG path (default docs/figures/<kind>.png)")
    p.add_argument("--index", type=int, default=7, help="which MNIST-5k test digit to show (attention, captions)")
    p.add_argument("--text", help="cross-attention: source text for a text encoder-decoder")
    p.add_argument("--target", help="cross-attention: target text to teacher-force (default: the model's greedy output)")
    p.add_argument("--tokenizer", help="folder with tokenizer.json (text models whose checkpoint stores none)")
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--dim", type=int, default=128)
    args = p.parse_args(argv)
    out = args.out or f"docs/figures/{args.kind}.png"

    if args.kind == "positions":
        print(plot_positions(args.length, args.dim, out))
        return 0
    model, ckpt = _model_from_args(args)
    if args.kind == "attention":
        images, labels = mnist_test_images()
        image = images[args.index % 10]
        if find_vit(model).config.in_chans != 1:
            raise SystemExit("`zoo viz attention` shows MNIST digits; pass a model with in_chans=1 (e.g. vit_mnist, clip_mnist)")
        print(plot_vit_attention(model, image, out, f"{getattr(model, 'model_name', type(model).__name__)}: digit {int(labels[args.index % 10])}"))
    elif args.kind == "clip-similarity":
        from .data.multimodal import class_prompts
        from .data.tokenizers import encode_batch

        tok = checkpoint_tokenizer(ckpt, args.tokenizer, args.ckpt)
        images, _ = mnist_test_images()
        texts = class_prompts(languages=("en",))[:10]  # the first held-out English template
        enc = encode_batch(tok, texts)
        sim = clip_similarity(model, images, enc["input_ids"], enc["attention_mask"])
        print(plot_similarity(sim, images, texts, out))
    else:  # cross-attention
        tok = checkpoint_tokenizer(ckpt, args.tokenizer, args.ckpt)
        cfg = model.config
        if args.text is None:  # image-to-text: an MNIST digit
            images, _ = mnist_test_images()
            inputs, mask, src_labels = images[args.index % 10][None], None, None
        else:
            from .data.tokenizers import encode_batch

            enc = encode_batch(tok, [args.text])
            inputs, mask = enc["input_ids"], enc["attention_mask"]
            src_labels = [tok.decode([i]).strip() or tok.convert_ids_to_tokens(i) for i in inputs[0].tolist()]
        if args.target is not None:
            tgt = [cfg.decoder_start_token_id] + tok(args.target)["input_ids"]
        else:
            tgt = model.generate(inputs, attention_mask=mask, max_new_tokens=30)[0].tolist()
            if cfg.eos_token_id in tgt:
                tgt = tgt[: tgt.index(cfg.eos_token_id) + 1]
        # rows: the token predicted at each step, reading the decoder input up to it
        predicted = [tok.decode([i]).strip() or tok.convert_ids_to_tokens(i) for i in tgt[1:]]
        if src_labels is None:
            print(plot_caption_attention(model, inputs[0], tgt[:-1], predicted, out, "caption: " + tok.decode(tgt, skip_special_tokens=True)))
        else:
            att = cross_attentions(model, inputs, torch.tensor([tgt[:-1]]), mask)[-1][0].mean(0)
            title = f"{args.text!r} -> {tok.decode(tgt, skip_special_tokens=True)!r}\ncross-attention, last layer, mean over heads"
            print(plot_cross_attention(att, src_labels, predicted, out, title))
    return 0
