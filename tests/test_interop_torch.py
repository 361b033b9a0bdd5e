"""torch.nn.Transformer and torchvision ViT -> zoo: outputs against the reference (random weights)."""
import warnings

import pytest
import torch
import torchvision

from zoo.interop import from_torch_transformer, from_torchvision_vit




def assert_parity(out, ref, keep=None, tol=1e-4):
    if keep is not None:
        out, ref = out[keep.bool()], ref[keep.bool()]
    bound = tol * max(1.0, ref.abs().max().item())
    err = (out - ref).abs().max().item()
    assert err <= bound, f"max|diff| {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("norm_first,activation", [(False, "relu"), (True, "gelu")])
def test_nn_transformer_parity(norm_first, activation):
    torch.manual_seed(0)
    ref = torch.nn.Transformer(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=24,
                               activation=activation, layer_norm_eps=1e-6, batch_first=True, norm_first=norm_first).eval()
    model = from_torch_transformer(ref, vocab_size=30)
    assert model.config.norm_eps == 1e-6 and model.config.final_norm and model.config.activation == activation
    ids = torch.randint(3, 30, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:], mask[2, 3:] = 0, 0
    dids = torch.randint(3, 30, (3, 5))
    dmask = torch.ones(3, 5, dtype=torch.long)
    dmask[0, 4:] = 0
    causal = torch.nn.Transformer.generate_square_subsequent_mask(5)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        ref, model = ref.to(dtype), model.to(dtype)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # nn.Transformer has no embeddings: feed it the zoo's embedded inputs; its masks use True = blocked
            src, tgt = model._embed(model.src_embed, ids), model._embed(model.tgt_embed, dids)
            memory = ref.encoder(src, src_key_padding_mask=~mask.bool())
            assert_parity(model.encode(ids, mask), memory, mask, tol)
            out = ref(src, tgt, src_key_padding_mask=~mask.bool(), tgt_key_padding_mask=~dmask.bool(),
                      memory_key_padding_mask=~mask.bool(), tgt_mask=causal.to(dtype), tgt_is_causal=True)
            assert_parity(model.forward_features(ids, dids, mask, dmask), out, dmask, tol)


def test_nn_transformer_embeddings_and_generator_are_taken_when_given():
    torch.manual_seed(0)
    ref = torch.nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=24)
    src, tgt, gen = torch.nn.Embedding(40, 16), torch.nn.Embedding(30, 16), torch.nn.Linear(16, 30, bias=False)
    model = from_torch_transformer(ref, vocab_size=30, src_embed=src, tgt_embed=tgt, generator=gen)
    assert torch.equal(model.src_embed.weight, src.weight) and torch.equal(model.lm_head.weight, gen.weight)
    assert torch.equal(model.tgt_embed.weight, tgt.weight)
    with pytest.raises(ValueError, match="bias=False"):
        from_torch_transformer(torch.nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                                    dim_feedforward=24, bias=False))
    with pytest.raises(TypeError, match="nn.Transformer"):
        from_torch_transformer(torch.nn.Linear(2, 2))


def test_torchvision_vit_parity():
    torch.manual_seed(0)
    ref = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32,
                                               mlp_dim=40, num_classes=5).eval()
    torch.nn.init.normal_(ref.heads.head.weight)  # torchvision zero-initialises the head
    model = from_torchvision_vit(ref)
    assert model.config.norm_eps == 1e-6
    x = torch.randn(2, 3, 32, 32)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        ref, model = ref.to(dtype), model.to(dtype)
        with torch.no_grad():
            assert_parity(model(x.to(dtype)), ref(x.to(dtype)), tol=tol)
