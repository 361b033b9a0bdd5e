"""`zoo viz`: the numbers behind each figure, and that the PNGs are written."""
import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo import viz


def test_vit_attention_rows_are_distributions_and_match_a_manual_softmax(tmp_path):
    torch.manual_seed(0)
    m = zoo.create_model("vit_mnist_patch4", depth=2).eval()
    x = torch.randn(2, 1, 28, 28)
    atts = viz.vit_attentions(m, x)
    assert len(atts) == 2 and atts[0].shape == (2, 4, 50, 50)
    for a in atts:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    # layer 0 by hand: softmax(q k^T / sqrt(d)) of the block's first norm of the embedded tokens
    tokens = m._pos_embed(m.patch_embed(x), m.grid)
    blk = m.encoder.blocks[0]
    q, k, _ = blk.attn.qkv(blk.norm1(tokens)).view(2, 50, 3, 4, 32).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(atts[0], (q @ k.transpose(-1, -2) / math.sqrt(32)).softmax(-1), rtol=1e-5, atol=1e-6)
    assert blk.attn.last_weights is not None and m(x).shape == (2, 10)  # hooks are gone: normal calls work
    roll = viz.attention_rollout(atts)
    torch.testing.assert_close(roll.sum(-1), torch.ones(2, 50))
    eye = torch.eye(50)
    a0, a1 = [(a.mean(1) + eye) / (a.mean(1) + eye).sum(-1, keepdim=True) for a in atts]
    torch.testing.assert_close(roll, a1 @ a0)
    out = viz.plot_vit_attention(m, x[0], tmp_path / "attn.png")
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"


def test_cross_attention_of_an_encoder_decoder(tmp_path):
    torch.manual_seed(0)
    m = zoo.create_model("vit_captioner_mnist", vocab_size=30).eval()
    images, ids = torch.randn(2, 1, 28, 28), torch.randint(3, 30, (2, 5))
    atts = viz.cross_attentions(m, images, ids)
    assert len(atts) == 2 and atts[-1].shape == (2, 4, 5, 50)
    torch.testing.assert_close(atts[-1].sum(-1), torch.ones(2, 4, 5))
    with pytest.raises(TypeError, match="no encoder"):
        viz.cross_attentions(zoo.create_model("vit_mnist"), images, ids)
    out = viz.plot_cross_attention(atts[-1][0].mean(0), [f"s{i}" for i in range(50)], [f"t{i}" for i in range(5)], tmp_path / "x.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_positions_figure_shows_the_formula(tmp_path):
    table = viz.sinusoidal_table(50, 16)
    pos, i = 13, 3  # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert viz.main(["positions", "--length", "50", "--dim", "16", "--out", str(tmp_path / "pe.png")]) == 0
    assert (tmp_path / "pe.png").read_bytes()[:4] == b"\x89PNG"


def test_clip_similarity_is_scaled_cosine(tmp_path):
    torch.manual_seed(0)
    m = zoo.create_model("clip_tiny", eos_token_id=2)
    images, ids = torch.randn(3, 3, 32, 32), torch.randint(3, 1000, (4, 6))
    ids[:, -1] = 2
    sim = viz.clip_similarity(m, images, ids)
    img = F.normalize(m.visual_projection(m.visual(images)), dim=-1)
    txt = F.normalize(m.text_projection(m.text(ids)), dim=-1)
    torch.testing.assert_close(sim, m.logit_scale.exp() * img @ txt.T)
    out = viz.plot_similarity(sim.detach(), images, ["a", "b", "c", "d"], tmp_path / "sim.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_windowed_attention_has_no_per_image_map_to_draw():
    import zoo

    with pytest.raises(TypeError, match="SwinTransformer declares no image tower .* windowed attention as Swin's"):
        viz.find_vit(zoo.create_model("swin_mnist"))
    assert viz.find_vit(zoo.create_model("vit_digits")) is not None


def test_cli_listed_and_errors():
    from zoo.cli import COMMANDS

    assert COMMANDS["viz"][0] == "zoo.viz:main"
    with pytest.raises(ValueError, match="--ckpt"):
        viz.main(["attention"])  # neither --ckpt nor --model
    with pytest.raises(TypeError, match="image tower"):
        viz.find_vit(torch.nn.Linear(2, 2))


def test_attention_figure_of_a_digits_model_uses_its_own_8x8_images(tmp_path):
    """The image comes from the run's data (8x8 digits here), and a mean-pooling model is not described by its class token."""
    from zoo.runs import Run

    m = zoo.create_model("vit_digits").eval()
    run = Run(m, "vit_digits", "mem", {"data": "zoo.data.images.Digits", "labels": [str(d) for d in range(10)]})
    images, names = viz.run_images(run)
    assert images.shape == (10, 1, 8, 8) and names[3] == "test image of class 3"
    out = viz.plot_vit_attention(m, images[3], tmp_path / "a.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_cli_never_writes_over_its_input_and_checks_its_arguments(tmp_path):
    """`--out` equal to an input image is refused (the digit would become its figure), as is a suffix matplotlib
    cannot write; an --index outside the images is named, not wrapped around."""
    from PIL import Image

    digit = tmp_path / "digit.png"
    Image.new("L", (8, 8), 200).save(digit)
    before = digit.read_bytes()
    with pytest.raises(ValueError, match="is one of the inputs; commands never write over their input"):
        viz.main(["attention", "--model", "vit_digits", "--image", str(digit), "--out", str(digit)])
    assert digit.read_bytes() == before
    with pytest.raises(ValueError, match=r"--out .*\.ckpt is no figure format; end it in one of .*\.png"):
        viz.main(["attention", "--model", "vit_digits", "--image", str(digit), "--out", str(tmp_path / "x.ckpt")])
    with pytest.raises(ValueError, match=r"--index 3: there are 1 images \(0..0\)"):
        viz.main(["attention", "--model", "vit_digits", "--image", str(digit), "--index", "3", "--out", str(tmp_path / "a.png")])
    assert viz.main(["attention", "--model", "vit_digits", "--image", str(digit), "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"  # one image: --index defaults to it
    with pytest.raises(ValueError, match="--length 0 --dim 128"):
        viz.main(["positions", "--length", "0", "--out", str(tmp_path / "p.png")])


@pytest.mark.parametrize("kind, model, match", [
    ("attention", "bert_tiny", "declares no image tower"),
    ("reconstruction", "vit_digits", "holds vit_digits, no masked image model"),
    ("clip-similarity", "vit_digits", "holds vit_digits, which has no image and text towers"),
    ("cross-attention", "vit_digits", "holds vit_digits, which has no encoder-decoder cross-attention"),
    ("cross-attention", "transformer_tiny", "a text encoder-decoder: pass --text"),
])
def test_cli_says_which_models_a_figure_is_for(kind, model, match, tmp_path):
    with pytest.raises((TypeError, ValueError), match=match):
        viz.main([kind, "--model", model, "--out", str(tmp_path / "f.png")])
    assert not (tmp_path / "f.png").exists()
