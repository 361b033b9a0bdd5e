"""`zoo viz`: figures of what a model attends to, written as PNG (matplotlib, Agg backend).

    zoo viz attention  --ckpt runs/vit_mnist [--image my_digit.png]         # per-head maps + rollout, one image
    zoo viz cross-attention --ckpt runs/caption_mnist                       # decoder tokens x image patches
    zoo viz cross-attention --ckpt runs/transformer_numbers --text "three hundred and twelve"
    zoo viz positions  --length 64 --dim 128                                # the sinusoidal encoding matrix
    zoo viz clip-similarity --ckpt runs/clip_mnist [--labels "a 3" "a 7"]   # test images x candidate texts
    zoo viz reconstruction --ckpt runs/mae_mnist                            # MAE: image, mask, reconstruction
A run folder stands for its newest last.ckpt; figures go to <run folder>/figures/ unless --out says otherwise.
Every command also takes `--model NAME` (random weights) instead of `--ckpt`.

The numbers behind the figures come from functions that tests check: `vit_attentions`
(softmax rows), `attention_rollout` (Abnar & Zuidema 2020), `cross_attentions`,
`sinusoidal_table` and `clip_similarity`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from .core import capture_attention, sinusoidal_table

# -- capturing attention probabilities --------------------------------------------------------


def find_vit(model: nn.Module) -> nn.Module:
    """The model's image tower, as it declares it (`image_tower()`: itself, CLIP's `.visual`, a captioner's encoder)."""
    tower = model.image_tower() if hasattr(model, "image_tower") else None
    if tower is None:
        raise TypeError(f"{type(model).__name__} declares no image tower with one attention map per image (its "
                        "image_tower() is None: a text model, or windowed attention as Swin's); `zoo viz attention` "
                        "draws the maps of ViT-style towers (ViT classifiers, CLIP's image tower, captioners' encoders)")
    return tower


@torch.no_grad()
def vit_attentions(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Self-attention probabilities of every layer of the image tower: a list of (B, H, N, N), N = prefix + patches."""
    vit = find_vit(model)
    was_training = vit.training
    vit.eval()
    try:
        with capture_attention(vit) as maps:
            vit.forward_features(images)
    finally:
        vit.train(was_training)
    return list(maps.values())


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


@torch.no_grad()
def cross_attentions(model: nn.Module, inputs: torch.Tensor, decoder_input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Cross-attention probabilities of every decoder layer, (B, H, T, S), for teacher-forced
    `decoder_input_ids`. Works on any zoo encoder-decoder (encode/decode contract)."""
    if not hasattr(model, "encode"):
        raise TypeError(f"{type(model).__name__} has no encoder; cross-attention needs an encoder-decoder model")
    was_training = model.training
    model.eval()
    try:
        memory = model.encode(inputs) if attention_mask is None else model.encode(inputs, attention_mask=attention_mask)
        with capture_attention(model) as maps:
            model.decode(decoder_input_ids, memory, memory_mask=attention_mask)
    finally:
        model.train(was_training)
    cross = [w for name, w in maps.items() if name.rsplit(".", 1)[-1] == "cross_attn"]
    if not cross:
        raise TypeError(f"{type(model).__name__} has no cross-attention layers to show")
    return cross


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
    """(model, the run's zoo record) through the one run loader (`zoo.runs.load_run`)."""
    from .runs import load_run

    run = load_run(path)
    return run.model, run.meta


def run_images(run, files: list[str] | None = None, count: int = 10) -> tuple[torch.Tensor, list[str]]:
    """Images to show, normalised as the run was trained: the user's files, else the first test
    image of each class from the run's own data module, else an error naming the fix."""
    from .data.images import read_images

    image = run.image or {}
    if files:
        if not image:
            tower = find_vit(run.model).config
            image = {"size": tower.img_size, "in_chans": tower.in_chans, "mean": 0.5, "std": 0.5}
        return read_images(files, **image), [Path(f).name for f in files]
    data = run.meta.get("data")
    if not data:
        raise ValueError(f"{run.source} has no data module to take test images from; pass --image FILE [FILE ...]")
    import importlib

    module, _, cls = data.rpartition(".")
    dm = getattr(importlib.import_module(module), cls)()
    dm.setup("test")
    x, y = dm.splits["test"].tensors[:2]
    idx = torch.cat([(y == c).nonzero().flatten()[:1] for c in y.unique(sorted=True)])[:count]
    labels = run.labels or [str(int(c)) for c in range(int(y.max()) + 1)]
    return x[idx], [f"test image of class {labels[int(y[i])]}" for i in idx]


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
    # the token the classifier reads: the class token when the model pools by it, else every patch (mean pooling)
    query = 0 if prefix and getattr(vit.config, "pool", "token") == "token" else None
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
    rrow = roll[0, prefix:] if query is not None else roll[prefix:, prefix:].mean(0)
    _show_image(axes[1, 0], image)
    axes[1, 1].imshow(rrow.reshape(grid).cpu(), cmap="inferno")
    axes[1, 1].set_title(f"rollout, {len(atts)} layers")
    axes[1, 2].imshow(image[0].cpu(), cmap="gray")
    axes[1, 2].imshow(torch.nn.functional.interpolate(rrow.reshape(1, 1, *grid), size=(h, w), mode="bilinear")[0, 0].cpu(),
                      cmap="inferno", alpha=0.6)
    axes[1, 2].set_title("rollout over image")
    for ax in axes[1, 1:]:
        ax.axis("off")
    query_name = "the class token" if query is not None else "all patches, averaged (the model pools by the mean)"
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


@torch.no_grad()
def mae_reconstructions(model: nn.Module, images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A masked image model's (reconstructions with the seen patches pasted back, masks (B, 1, H, W), 1 = removed),
    for noise drawn with `seed` (the same masks every call)."""
    if not hasattr(model, "reconstruct"):
        raise TypeError(f"{type(model).__name__} is no masked image model; `zoo viz reconstruction` shows MAE runs "
                        "(e.g. configs/mae_mnist.yaml)")
    was_training = model.training
    model.eval()
    try:
        noise = torch.rand(images.shape[0], model.num_patches, generator=torch.Generator().manual_seed(seed))
        return model.reconstruct(images, noise)
    finally:
        model.train(was_training)


def plot_reconstructions(model: nn.Module, images: torch.Tensor, out: str | Path, title: str = "", seed: int = 0) -> Path:
    """Columns: images; rows: the image, what the encoder sees (removed patches grey), the reconstruction."""
    plt = _plt()
    recon, mask = mae_reconstructions(model, images, seed)
    grey = images.amin() + 0.3 * (images.amax() - images.amin())
    seen = images * (1 - mask) + grey * mask  # removed patches drawn grey
    n = images.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2), squeeze=False)
    for i in range(n):
        for row, img in enumerate((images[i], seen[i], recon[i])):
            _show_image(axes[row, i], img)
    for row, name in enumerate(("image", "visible", "reconstruction")):
        axes[row, 0].text(-0.15, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, ha="right", va="center", fontsize=8)
    ratio = getattr(model.config, "mask_ratio", None)
    fig.suptitle(title or f"MAE reconstruction, {ratio:.0%} of the patches removed")
    return _save(fig, out)


# -- the command --------------------------------------------------------------------------------


def _run_from_args(args):
    from .runs import load_run

    if not (args.ckpt or args.model):
        raise ValueError("pass --ckpt PATH (a `zoo fit` checkpoint or run folder) or --model NAME")
    run = load_run(args.ckpt or args.model)
    if args.tokenizer:
        from .data.tokenizers import load_tokenizer

        run.tokenizer = load_tokenizer(args.tokenizer)
    return run


def _default_out(args, run=None) -> Path:
    """Figures go beside the run they show (<run folder>/figures/), else into the current folder."""
    if args.out:
        return Path(args.out)
    if run is not None and args.ckpt and Path(run.source).parent.name == "checkpoints":
        return Path(run.source).parent.parent / "figures" / f"{args.kind}.png"
    return Path(f"{args.kind}.png")


def _check_out(out: Path, args) -> None:
    """A figure is written only where no input lies and in a format matplotlib writes (commands never write over
    their input: `--out my_digit.png --image my_digit.png` would replace the digit with its figure). Figures may
    go inside a run folder they read (<run>/figures/), so this is not `zoo.weights.refuse_overwriting_input`."""
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = out.suffix.lower().lstrip(".")
    formats = FigureCanvasBase.get_supported_filetypes()
    if fmt not in formats:
        raise ValueError(f"--out {out}: {out.suffix or 'no suffix'} is no figure format; end it in one of "
                         f"{', '.join('.' + f for f in sorted(formats))} (e.g. .png)")
    inputs = [*(args.image or []), *([args.ckpt] if args.ckpt else []), *([args.tokenizer] if args.tokenizer else [])]
    for given in inputs:
        if Path(given).exists() and out.resolve() == Path(given).resolve():
            raise ValueError(f"--out {out} is one of the inputs; commands never write over their input: "
                             "choose another --out")


def _pick(images: torch.Tensor, index: int | None, what: str) -> int:
    i = 0 if index is None else index
    if not 0 <= i < len(images):
        raise ValueError(f"--index {index}: there are {len(images)} {what} (0..{len(images) - 1})")
    return i


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="zoo viz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["attention", "cross-attention", "positions", "clip-similarity",
                                      "reconstruction"])
    p.add_argument("--ckpt", help="checkpoint written by `zoo fit` (or its run folder)")
    p.add_argument("--model", help="registered model name (random weights) when no --ckpt")
    p.add_argument("--out", help="figure path, .png/.jpg/.pdf/.svg (default: <run folder>/figures/<kind>.png, or ./<kind>.png)")
    p.add_argument("--image", nargs="+", help="image file(s) to show (default: the run's own test images)")
    p.add_argument("--index", type=int, default=None,
                   help="which image (attention, captions): of the --image files (default 0), else of the run's test "
                        "images, one per class in class order (default 7)")
    p.add_argument("--text", help="cross-attention: source text for a text encoder-decoder")
    p.add_argument("--target", help="cross-attention: target text to teacher-force (default: the model's greedy output)")
    p.add_argument("--labels", nargs="+", help="clip-similarity: candidate texts (default: the run's class prompts)")
    p.add_argument("--tokenizer", help="folder with tokenizer.json (default: the one stored in the checkpoint)")
    p.add_argument("--length", type=int, default=64, help="positions: number of positions (rows)")
    p.add_argument("--dim", type=int, default=128, help="positions: model width (columns)")
    args = p.parse_args(argv)
    if args.index is None and not args.image:
        args.index = 7

    if args.kind == "positions":
        if args.length < 1 or args.dim < 2:
            raise ValueError(f"--length {args.length} --dim {args.dim}: draw at least one position of width 2")
        out = _default_out(args)
        _check_out(out, args)
        print(plot_positions(args.length, args.dim, out))
        return 0
    run = _run_from_args(args)
    model, out = run.model, _default_out(args, run)
    _check_out(out, args)
    name = run.name
    if args.kind == "attention":
        find_vit(model)  # says which models have maps before any data is loaded
        images, names = run_images(run, args.image)
        i = _pick(images, args.index, "images")
        print(plot_vit_attention(model, images[i], out, f"{run.name}: {names[i]}"))
        return 0
    if args.kind == "reconstruction":
        if not hasattr(model, "reconstruct"):
            raise TypeError(f"{run.source} holds {name}, no masked image model; `zoo viz reconstruction` shows MAE "
                            "runs (e.g. configs/mae_mnist.yaml)")
        images, _ = run_images(run, args.image)
        print(plot_reconstructions(model, images, out, f"{run.name}: {model.config.mask_ratio:.0%} of the patches removed, "
                                                       "test images"))
        return 0
    if args.kind == "clip-similarity" and not (hasattr(model, "encode_image") and hasattr(model, "encode_text")):
        raise TypeError(f"{run.source} holds {name}, which has no image and text towers; `zoo viz clip-similarity` "
                        "shows CLIP/SigLIP runs (e.g. configs/clip_mnist.yaml)")
    if args.kind == "cross-attention":
        if not hasattr(model, "encode") or not hasattr(model, "decode"):
            raise TypeError(f"{run.source} holds {name}, which has no encoder-decoder cross-attention; "
                            "`zoo viz cross-attention` shows captioners and translation models (e.g. "
                            "configs/caption_mnist.yaml, configs/transformer_numbers.yaml)")
        if args.text is None and (not hasattr(model, "image_tower") or model.image_tower() is None):
            raise ValueError(f"{run.source} holds {name}, a text encoder-decoder: pass --text \"SOURCE TEXT\"")
    tok = run.tokenizer
    if tok is None:
        raise ValueError(f"{run.source} stores no tokenizer; pass --tokenizer DIR (a folder written by save_tokenizer)")
    if args.kind == "clip-similarity":
        from .data.tokenizers import encode_batch

        images, _ = run_images(run, args.image)
        texts = args.labels or [f"a photo of the number {c}" for c in (run.labels or range(10))]
        enc = encode_batch(tok, texts)
        sim = clip_similarity(model, images, enc["input_ids"], enc["attention_mask"])
        print(plot_similarity(sim, images, texts, out))
        return 0
    cfg = model.config  # cross-attention
    if args.text is None:  # image-to-text: one of the run's images
        images, _ = run_images(run, args.image)
        inputs, mask, src_labels = images[_pick(images, args.index, 'images')][None], None, None
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
    predicted = [tok.decode([i]).strip() or tok.convert_ids_to_tokens(i) for i in tgt[1:]]
    if src_labels is None:
        print(plot_caption_attention(model, inputs[0], tgt[:-1], predicted, out, "caption: " + tok.decode(tgt, skip_special_tokens=True)))
    else:
        att = cross_attentions(model, inputs, torch.tensor([tgt[:-1]]), mask)[-1][0].mean(0)
        title = f"{args.text!r} -> {tok.decode(tgt, skip_special_tokens=True)!r}\ncross-attention, last layer, mean over heads"
        print(plot_cross_attention(att, src_labels, predicted, out, title))
    return 0
