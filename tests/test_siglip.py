"""SigLIP: the sigmoid loss against open_clip's SigLipLoss and ClipLoss (values and gradients, one process
and two gloo processes), the task's `loss: siglip` switch and its paper init, and from_hf(SiglipModel) parity."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.interop import from_hf
from zoo.tasks.contrastive import ContrastiveTask
from zoo.tasks.losses import distributed_contrastive_loss, siglip_loss

open_clip_loss = pytest.importorskip("open_clip.loss")


def features(n=6, d=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    return img, txt


def loss_and_grads(fn, img, txt, log_scale, bias):
    """Loss and d(loss)/d(img, txt, log_scale, bias) with fresh leaves; the scale enters as exp(log_scale)."""
    leaves = [t.clone().requires_grad_() for t in (img, txt, log_scale, bias)]
    loss = fn(leaves[0], leaves[1], leaves[2].exp(), leaves[3])
    return loss.detach(), torch.autograd.grad(loss, leaves, allow_unused=True)


def assert_rel(a, b, rtol=1e-5):
    err = (a - b).abs().max().item()
    assert err <= rtol * max(b.abs().max().item(), 1e-12), f"max|diff| {err:.3g} vs scale {b.abs().max().item():.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("log_scale,bias", [(math.log(10), -10.0), (2.0, 0.7)])
def test_losses_and_gradients_equal_open_clip(dtype, log_scale, bias):
    img, txt = features(dtype=dtype)
    ls, b = torch.tensor(log_scale, dtype=dtype), torch.tensor(bias, dtype=dtype)
    for kind, ref in (("siglip", open_clip_loss.SigLipLoss()), ("clip", open_clip_loss.ClipLoss())):
        ours = loss_and_grads(lambda i, t, s, bb, k=kind: distributed_contrastive_loss(k, i, t, s, bb), img, txt, ls, b)
        theirs = loss_and_grads(lambda i, t, s, bb, r=ref, k=kind: r(i, t, s, bb if k == "siglip" else None), img, txt, ls, b)
        assert_rel(ours[0], theirs[0])
        for g_ours, g_ref in zip(ours[1][:3], theirs[1][:3]):  # features and temperature
            assert_rel(g_ours, g_ref)
        if kind == "siglip":
            assert_rel(ours[1][3], theirs[1][3])


def test_siglip_loss_formula_and_label_targets():
    img, txt = features(n=5)
    s, b = torch.tensor(7.0), torch.tensor(-2.0)
    z = s * img @ txt.T + b
    manual = sum(-F.logsigmoid(z[i, j] if i == j else -z[i, j]) for i in range(5) for j in range(5)) / 5
    torch.testing.assert_close(siglip_loss(img, txt, s, b), manual)
    # distinct class ids are CLIP-style targets; a shared id makes the pair (0, 1) a positive too
    labels = torch.arange(5)
    torch.testing.assert_close(siglip_loss(img, txt, s, b, labels=labels, all_labels=labels), manual)
    labels = torch.tensor([0, 0, 1, 2, 3])
    shared = manual + (F.logsigmoid(-z[0, 1]) - F.logsigmoid(z[0, 1]) + F.logsigmoid(-z[1, 0]) - F.logsigmoid(z[1, 0])) / 5
    torch.testing.assert_close(siglip_loss(img, txt, s, b, labels=labels, all_labels=labels), shared)


def test_task_switch_uses_the_paper_init():
    task = ContrastiveTask("clip_tiny", loss="siglip")
    assert task.model.logit_scale.item() == pytest.approx(math.log(10)) and task.model.logit_bias.item() == -10.0
    assert task.model.scale().item() == pytest.approx(10.0)
    assert ContrastiveTask("clip_tiny").model.logit_bias is None  # the softmax loss keeps CLIP unchanged
    # the user's own model_kwargs win over the paper's init
    assert ContrastiveTask("clip_tiny", loss="siglip", model_kwargs={"logit_bias_init": -5.0}).model.logit_bias.item() == -5.0
    with pytest.raises(ValueError, match="loss must be one of"):
        ContrastiveTask("clip_tiny", loss="sigmoid")


DDP_SCRIPT = textwrap.dedent("""
    import importlib.util, signal, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    import torch.nn.functional as F
    from zoo.tasks.losses import distributed_contrastive_loss

    # open_clip/loss.py needs only torch: load it alone, without the package's heavy __init__ (timm, tokenizers)
    where = importlib.util.find_spec("open_clip").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("open_clip_loss", f"{where}/loss.py")
    ref_loss = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref_loss)
    ClipLoss, SigLipLoss = ref_loss.ClipLoss, ref_loss.SigLipLoss

    def grads(fn, img, txt, log_scale, bias):
        leaves = [t.clone().requires_grad_() for t in (img, txt, log_scale, bias)]
        loss = fn(leaves[0], leaves[1], leaves[2].exp(), leaves[3])
        return [loss.detach(), *torch.autograd.grad(loss, leaves, allow_unused=True)]

    def run(rank, port, out):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        torch.manual_seed(0)
        img, txt = F.normalize(torch.randn(8, 6), dim=-1), F.normalize(torch.randn(8, 6), dim=-1)
        img, txt = img[rank * 4:(rank + 1) * 4], txt[rank * 4:(rank + 1) * 4]
        ls, b = torch.tensor(1.5), torch.tensor(-3.0)
        res = {}
        for impl in ("bidir", "gather"):
            ref = SigLipLoss(rank=rank, world_size=2, dist_impl=impl)
            res[f"siglip_ref_{impl}"] = grads(lambda i, t, s, bb: ref(i, t, s, bb), img, txt, ls, b)
        res["siglip"] = grads(lambda i, t, s, bb: distributed_contrastive_loss("siglip", i, t, s, bb), img, txt, ls, b)
        ref = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=2)
        res["clip_ref"] = grads(lambda i, t, s, bb: ref(i, t, s) + 0 * bb, img, txt, ls, b)
        res["clip"] = grads(lambda i, t, s, bb: distributed_contrastive_loss("clip", i, t, s, bb) + 0 * bb, img, txt, ls, b)
        torch.save(res, f"{out}/rank{rank}.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        mp.start_processes(run, args=(port, sys.argv[1]), nprocs=2, start_method="fork")
""")


def test_two_process_gloo_losses_equal_open_clip(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], check=False, capture_output=True, text=True,
                          timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for res in ranks:  # per process: the loss and every gradient equal open_clip's (both exchange schemes)
        for ours, ref in (("siglip", "siglip_ref_bidir"), ("siglip", "siglip_ref_gather"), ("clip", "clip_ref")):
            for a, b in zip(res[ours][:4], res[ref][:4]):
                assert_rel(a, b)
        assert_rel(res["siglip"][4], res["siglip_ref_bidir"][4])
    # the mean of the per-process losses is the loss of the global batch of 8; gradients sum to world_size x its
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(8, 6), dim=-1), F.normalize(torch.randn(8, 6), dim=-1)
    full = loss_and_grads(lambda i, t, s, b: siglip_loss(i, t, s, b), img, txt, torch.tensor(1.5), torch.tensor(-3.0))
    assert_rel((ranks[0]["siglip"][0] + ranks[1]["siglip"][0]) / 2, full[0])
    for r in range(2):
        assert_rel(ranks[r]["siglip"][1], 2 * full[1][0][r * 4:(r + 1) * 4])
        assert_rel(ranks[r]["siglip"][2], 2 * full[1][1][r * 4:(r + 1) * 4])
    assert_rel((ranks[0]["siglip"][3] + ranks[1]["siglip"][3]) / 2, full[1][2])  # DDP's average of the temperature grad


# --------------------------------------------------------------------------------------- the model
def test_siglip_towers_and_published_size():
    with torch.device("meta"):
        assert sum(p.numel() for p in zoo.create_model("siglip_base_patch16_224").parameters()) == 203_155_970  # = HF
    torch.manual_seed(0)
    m = zoo.create_model("siglip_mnist").eval()
    assert m.visual.cls_token is None and m.attn_pool is not None and m.text_projection.bias is not None
    ids = torch.tensor([[5, 6, 7, 2, 9, 9]])
    changed = ids.clone()
    changed[0, 4] = 8  # bidirectional text tower pooled at the last position: a later token changes the embedding
    assert not torch.allclose(m.encode_text(ids), m.encode_text(changed))
    images = torch.randn(2, 1, 28, 28)
    assert m.encode_image(images).shape == (2, 96)
    torch.testing.assert_close(m(images, ids), m.scale() * m.encode_image(images) @ m.encode_text(ids).T - 10.0)
    with pytest.raises(ValueError, match="vision_width .* must equal embed_dim"):
        zoo.create_model("siglip_mnist", embed_dim=64)
    with pytest.raises(ValueError, match="vision_pool"):
        zoo.create_model("clip_tiny", vision_pool="mean")


def siglip_ref(**kw):
    import transformers as T

    torch.manual_seed(0)
    ref = T.SiglipModel(T.SiglipConfig(
        text_config={"vocab_size": 99, "hidden_size": 48, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "max_position_embeddings": 16, "projection_size": 40, "pad_token_id": 1, "bos_token_id": None,
                         "eos_token_id": None},
        vision_config=dict(hidden_size=40, intermediate_size=52, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                           patch_size=8, **kw))).eval()
    with torch.no_grad():
        ref.logit_scale.fill_(2.3)
        ref.logit_bias.fill_(-4.0)
    return ref


@pytest.mark.parametrize("from_dir", [False, True])
def test_from_hf_siglip_parity(from_dir, tmp_path):
    ref = siglip_ref()
    if from_dir:
        ref.save_pretrained(tmp_path)
    model = from_hf(tmp_path if from_dir else ref)
    assert model.config.vision_pool == "map" and model.config.text_pool == "last" and model.config.activation == "gelu_tanh"
    g = torch.Generator().manual_seed(1)
    # texts padded to max_position_embeddings (16), as HF's SigLIP processor and zero-shot pipeline pad them
    ids = torch.randint(2, 99, (3, 16), generator=g)
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[0, 10:], mask[1, 7:], mask[2, 4:] = 0, 0, 0
    ids[mask == 0] = 1
    x = torch.randn(2, 3, 32, 32, generator=g)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        ref, model = ref.to(dtype), model.to(dtype)
        xd = x.to(dtype)
        with torch.no_grad():
            for m in (mask, None):  # HF applies the attention mask only when given
                r = ref(input_ids=ids, attention_mask=m, pixel_values=xd)
                pairs = [(model.encode_image(xd), r.image_embeds), (model.encode_text(ids, m), r.text_embeds),
                         (model(xd, ids, m), r.logits_per_image)]
                if m is not None:  # zoo pads shorter texts to context_length itself: the batch's padding changes nothing
                    pairs.append((model.encode_text(ids[:, :10], mask[:, :10]), r.text_embeds))
                for ours, theirs in pairs:
                    err = (ours - theirs).abs().max().item()
                    assert err <= tol * theirs.abs().max().item(), (dtype, err)
            # HF's own sigmoid loss (texts as rows) equals ours on the same embeddings (square batch)
            img, txt = model.encode_image(xd[:2]), model.encode_text(ids[:2], mask[:2])
            r = ref(input_ids=ids[:2], attention_mask=mask[:2], pixel_values=xd[:2], return_loss=True)
            loss = siglip_loss(txt, img, model.scale(), model.bias())
            assert abs(loss.item() - r.loss.item()) <= tol * abs(r.loss.item())


def test_a_siglip_text_embedding_does_not_depend_on_the_batch_padding():
    """SigLIP's text tower reads the last position: a label padded to the longest of its batch got another embedding
    (and another sigmoid score) depending on the other candidate labels; texts are now read padded to context_length."""
    torch.manual_seed(0)
    m = zoo.create_model("siglip_mnist").eval()
    ids = torch.tensor([[5, 6, 7, 2]])
    with torch.no_grad():
        alone = m.encode_text(ids)
        for width in (6, 11, m.config.context_length):
            padded = torch.nn.functional.pad(ids, (0, width - 4), value=m.config.pad_token_id)
            mask = (torch.arange(width) < 4).long()[None]
            torch.testing.assert_close(m.encode_text(padded, mask), alone, atol=1e-6, rtol=1e-5)
            batch = torch.cat([padded, torch.randint(3, 500, (1, width))])  # beside a longer text
            torch.testing.assert_close(m.encode_text(batch, torch.cat([mask, torch.ones_like(mask)]))[:1], alone,
                                       atol=1e-6, rtol=1e-5)


def test_from_hf_siglip_refuses_a_headless_vision_tower():
    with pytest.raises(ValueError, match="vision_use_head"):
        from_hf(siglip_ref(vision_use_head=False))


def test_the_padded_text_tower_exports_with_a_dynamic_sequence_axis(tmp_path):
    """The padding to context_length has no branch on the length: dynamo's exporter keeps the sequence axis dynamic
    (a first version fell back to the TorchScript exporter) and onnxruntime agrees at other lengths."""
    pytest.importorskip("onnxruntime")
    from zoo.contract import example_inputs
    from zoo.export import check_onnx, export_file

    torch.manual_seed(0)
    m = zoo.create_model("siglip_mnist").eval()
    how = export_file(m, tmp_path / "s.onnx", "onnx", batch=2, length=5)
    assert how.startswith("dynamo")
    for length in (3, m.config.context_length):
        assert check_onnx(m, tmp_path / "s.onnx", example_inputs(m, 2, length, seed=length)) <= 1e-4
