"""MAE (zoo.models.mae): parity with transformers' ViTMAEForPreTraining for the same noise, parameter counts at
the published sizes, the encoder loading into the plain ViT, the masking rules, the few-labels data option,
and the reconstruction figure."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.interop.hf import from_hf
from zoo.models.mae import MaskedAutoencoder, random_masking, sincos_2d_table
from zoo.registry import count_parameters

transformers = pytest.importorskip("transformers")
from transformers import ViTMAEConfig, ViTMAEForPreTraining

ODD = {"image_size": 30, "patch_size": 5, "num_channels": 2, "hidden_size": 36, "num_hidden_layers": 2,
       "num_attention_heads": 3, "intermediate_size": 52, "decoder_hidden_size": 20, "decoder_num_hidden_layers": 1,
       "decoder_num_attention_heads": 2, "decoder_intermediate_size": 44, "mask_ratio": 0.6, "norm_pix_loss": True,
       "qkv_bias": False}


def hf_model(seed: int = 0, **kw) -> ViTMAEForPreTraining:
    """A random HF MAE with its sin-cos tables filled (a fresh one has them zero) and non-zero cls / mask tokens."""
    torch.manual_seed(seed)
    hf = ViTMAEForPreTraining(ViTMAEConfig(**kw)).eval()
    grid = hf.config.image_size // hf.config.patch_size
    with torch.no_grad():
        hf.vit.embeddings.position_embeddings.copy_(sincos_2d_table(grid, hf.config.hidden_size))
        hf.decoder.decoder_pos_embed.copy_(sincos_2d_table(grid, hf.config.decoder_hidden_size))
        hf.vit.embeddings.cls_token.normal_()
        hf.decoder.mask_token.normal_()
    return hf


def compare(hf, batch: int, dtype: torch.dtype, tol: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = hf.config
    x = torch.randn(batch, c.num_channels, c.image_size, c.image_size, generator=g, dtype=dtype)
    noise = torch.rand(batch, (c.image_size // c.patch_size) ** 2, generator=g, dtype=dtype)
    hf = hf.to(dtype)
    ours = from_hf(hf, dtype=dtype)
    assert isinstance(ours, MaskedAutoencoder)
    with torch.no_grad():
        ref, out = hf(pixel_values=x, noise=noise), ours(x, noise)
    assert torch.equal(out.mask, ref.mask) and torch.equal(out.ids_restore, ref.ids_restore)
    scale = ref.logits.abs().max().item()
    assert (out.logits - ref.logits).abs().max().item() <= tol * scale
    assert abs(out.loss.item() - ref.loss.item()) <= tol * abs(ref.loss.item())
    return ours, ref


def test_sincos_table_equals_transformers_layout():
    from transformers.models.vit_mae.modeling_vit_mae import (
        build_2d_sinusoidal_position_embedding,
    )

    table = build_2d_sinusoidal_position_embedding(7, 7, 32, cls_token=True)
    hf = torch.cat([table[:, 16:], table[:, :16]], dim=1)  # transformers rotates the halves (column first, as MAE)
    torch.testing.assert_close(sincos_2d_table(7, 32)[0], hf, rtol=0, atol=0)
    assert sincos_2d_table(7, 32)[0, 0].abs().max() == 0  # the class-token row is zero


@pytest.mark.parametrize("name, kw", [("mae_vit_base_patch16", {}),
                                      ("mae_vit_large_patch16", {"hidden_size": 1024, "num_hidden_layers": 24,
                                                                     "num_attention_heads": 16, "intermediate_size": 4096})])
def test_parameter_counts_equal_transformers(name, kw):
    with torch.device("meta"):
        hf = ViTMAEForPreTraining(ViTMAEConfig(**kw))
    assert zoo.model_info(name)["params"] == count_parameters(hf)
    assert zoo.model_info("mae_vit_base_patch16")["params"] == 111_907_840  # parity_facts_variants §5


@pytest.mark.slow
def test_parity_at_the_published_base_size():
    compare(hf_model(), batch=1, dtype=torch.float32, tol=1e-4)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_parity_at_an_odd_small_config(dtype, tol):
    ours, ref = compare(hf_model(1, **ODD), batch=3, dtype=dtype, tol=tol)
    assert ours.config.norm_pix_loss and not ours.config.qkv_bias and ours.config.in_chans == 2
    assert ref.mask.sum(1).tolist() == [36 - int(36 * 0.4)] * 3


def test_saved_directory_loads_and_other_architectures_are_refused(tmp_path):
    hf = hf_model(2, **ODD)
    hf.save_pretrained(tmp_path)  # writes the decoder layers as decoder.decoder_encoder.layer.i
    ours = from_hf(str(tmp_path))
    x, noise = torch.randn(1, 2, 30, 30), torch.rand(1, 36)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, noise).logits, hf(pixel_values=x, noise=noise).logits, rtol=1e-4, atol=1e-5)
    from zoo.interop import hf_mae

    with pytest.raises(ValueError, match="ViTMAEForPreTraining"):
        hf_mae.from_hf(hf.config, hf.state_dict(), "ViTMAEModel")
    with pytest.raises(ValueError, match="unexpected HF ViTMAE weights.*extra"):
        hf_mae.from_hf(hf.config, {**hf.state_dict(), "extra.weight": torch.zeros(1)}, None)


def test_encoder_loads_into_the_plain_vit_and_gives_its_features(tmp_path):
    from zoo.tasks.text import load_matching

    torch.manual_seed(0)
    mae = zoo.create_model("mae_mnist").eval()
    path = tmp_path / "mae.pt"
    torch.save(mae.state_dict(), path)
    vit = zoo.create_model("vit_mnist_patch4").eval()  # the same encoder, class-token pooling, final norm
    report = load_matching(vit, str(path))
    assert sorted(report["new"]) == ["head.bias", "head.weight"]
    assert all(k.startswith(("decoder", "mask_token")) for k in report["skipped"])
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = vit.forward_features(x)
        torch.testing.assert_close(mae.encode(x, mask_ratio=0.0)[0], ref, rtol=1e-5, atol=1e-5)
        # with mask ratio 0 a shuffle only permutes the patch tokens
        noise = torch.rand(2, 49)
        shuffled, mask, _ = mae.encode(x, noise, mask_ratio=0.0)
        assert mask.sum() == 0
        order = torch.argsort(noise, dim=1)
        torch.testing.assert_close(shuffled[:, 1:], torch.stack([ref[b, 1:][order[b]] for b in range(2)]), rtol=1e-5, atol=1e-5)


def test_masking_keeps_the_smallest_noise_and_bad_inputs_raise():
    tokens = torch.arange(10.0)[None, :, None].expand(2, -1, 3)
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.0, 0.6, 0.4]] * 2)
    kept, mask, ids_restore = random_masking(tokens, 3, noise)
    assert kept[0, :, 0].tolist() == [7.0, 1.0, 5.0]  # ascending noise order, as transformers
    assert mask[0].tolist() == [1, 0, 1, 1, 1, 0, 1, 0, 1, 1]
    assert torch.equal(torch.argsort(torch.argsort(noise, 1), 1), ids_restore)
    mae = zoo.create_model("mae_mnist")
    with pytest.raises(ValueError, match="noise must have shape"):
        mae(torch.randn(2, 1, 28, 28), torch.rand(2, 48))
    with pytest.raises(ValueError, match="fixed for 28x28"):
        mae(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        zoo.create_model("mae_mnist", mask_ratio=1.0)


def test_label_fraction_is_stratified_and_seeded():
    from zoo.data import MNIST5k

    subsets = []
    for seed in (0, 0, 1):
        dm = MNIST5k(label_fraction=0.1, label_seed=seed)
        dm.setup()
        x, y = dm.splits["train"].tensors
        assert len(y) == 360 and torch.bincount(y).tolist() == [36] * 10
        assert len(dm.splits["val"]) == 400 and len(dm.splits["test"]) == 1000
        subsets.append(x.flatten(1).sum(1))
    assert torch.equal(subsets[0], subsets[1]) and not torch.equal(subsets[0], subsets[2])
    with pytest.raises(ValueError, match="label_fraction"):
        MNIST5k(label_fraction=0.0)


def test_reconstruction_figure_pastes_the_seen_patches(tmp_path):
    from zoo.viz import mae_reconstructions, plot_reconstructions

    torch.manual_seed(0)
    mae = zoo.create_model("mae_mnist")
    x = torch.randn(3, 1, 28, 28)
    recon, mask = mae_reconstructions(mae, x, seed=3)
    assert mask.shape == (3, 1, 28, 28) and mask.mean().item() == pytest.approx(37 / 49)
    torch.testing.assert_close(recon * (1 - mask), x * (1 - mask))  # seen patches are the input's
    assert (recon - x).abs()[mask.bool()].min() > 0  # removed ones are predicted
    again, _ = mae_reconstructions(mae, x, seed=3)
    assert torch.equal(recon, again) and mae.training  # fixed masks; the model's mode is restored
    assert plot_reconstructions(mae, x, tmp_path / "r.png").stat().st_size > 0
    with pytest.raises(TypeError, match="no masked image model"):
        mae_reconstructions(zoo.create_model("vit_mnist_patch4"), x)


def test_mae_evaluation_loss_does_not_depend_on_the_batch_size():
    """Each image's masking noise is its own: with one generator per batch seeded by the batch index, val/loss of
    the same weights was 2.3302, 2.3427 and 2.3401 at batch sizes 64, 100 and 50."""
    import lightning as L

    from zoo.data.images import MNIST5k
    from zoo.tasks.mae import MaskedImagePretraining

    torch.manual_seed(0)
    task = MaskedImagePretraining("mae_mnist", data_overrides=MNIST5k().model_overrides)
    losses = []
    for batch_size in (64, 100):
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        losses.append(trainer.validate(task, datamodule=MNIST5k(batch_size=batch_size), verbose=False)[0]["val/loss"])
    assert abs(losses[0] - losses[1]) < 1e-5, losses
    images = torch.randn(3, 1, 28, 28)
    assert torch.equal(task.fixed_noise(images)[1:], task.fixed_noise(images[1:]))  # an image's noise is its own


def test_weights_of_another_image_size_keep_this_grids_fixed_tables(tmp_path):
    """create_model("mae_mnist", pretrained=dir, img_size=56) refused the 28px weights (shape mismatch of the sin-cos
    tables, which are not learned); now the model keeps its own tables and loads every other tensor."""
    torch.manual_seed(0)
    model = zoo.create_model("mae_mnist")
    model.save_pretrained(tmp_path)
    big = zoo.create_model("mae_mnist", pretrained=str(tmp_path), img_size=56)
    fresh = zoo.create_model("mae_mnist", img_size=56)
    for key in ("pos_embed", "decoder_pos_embed"):
        torch.testing.assert_close(getattr(big, key), getattr(fresh, key), rtol=0, atol=0)
    torch.testing.assert_close(big.decoder_pred.weight, model.decoder_pred.weight, rtol=0, atol=0)
