"""ONNX export with dynamic axes, checked in onnxruntime against PyTorch at two batch sizes / lengths."""
import json
import re

import pytest
import torch

import zoo
from zoo.export import check_onnx, example_inputs, export_onnx, export_torch, load_model

pytest.importorskip("onnxruntime")

TINY = {
    "vit_mnist": {"depth": 1, "dim": 32, "num_heads": 2},
    "bert_tiny": {"head": "cls", "depth": 1, "dim": 32, "num_heads": 2, "vocab_size": 100},
    "transformer_tiny": {"num_encoder_layers": 1, "num_decoder_layers": 1, "d_model": 32, "num_heads": 2,
                         "dim_feedforward": 64, "vocab_size": 100},
    # attention with a bias: the merge of the heads is an explicit copy under export (it fell back to TorchScript)
    "t5_small": {"vocab_size": 100, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_heads": 4,
                 "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20},
    # window attention with its bias and shift mask: the same merge of the heads (it fell back to TorchScript)
    "swin_mnist": {"embed_dim": 16, "depths": (2, 2), "num_heads": (2, 2)},  # the second block of a stage is shifted
    # a text length bounded by the model's declaration (context_length), not by a guess at its config's keys
    "clip_mnist": {},
}


@pytest.mark.parametrize("name", list(TINY))
def test_onnx_matches_pytorch_at_two_shapes(name, tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model(name, **TINY[name]).eval()
    path = tmp_path / f"{name}.onnx"
    assert export_onnx(model, example_inputs(model, batch=2, length=8), path) == "dynamo"
    for batch, length in ((3, 11), (1, 5)):  # neither is the traced shape: the axes are dynamic
        ex = example_inputs(model, batch, length, seed=batch)
        assert check_onnx(model, path, ex) <= 1e-4


def test_torch_export_program_runs_at_another_batch():
    model = zoo.create_model("bert_tiny", **TINY["bert_tiny"]).eval()
    program = export_torch(model, example_inputs(model, 2, 8))
    ex = example_inputs(model, 4, 13, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*ex.args), model(*ex.args))


def test_load_model_errors_name_the_fix(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zoo metadata|NAME@|cannot read"):
        load_model(str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="unknown model"):
        load_model("vit_mnits")


def test_export_refuses_to_write_over_its_input_and_removes_a_broken_file(tmp_path):
    from zoo.export import ExportError, export_file
    from zoo.weights import save_safetensors

    model = zoo.create_model("vit_mnist", **TINY["vit_mnist"]).eval()
    weights = tmp_path / "w.safetensors"
    save_safetensors(model, weights)
    before = weights.read_bytes()
    with pytest.raises(ExportError, match="being exported"):
        export_file(model, weights, "torch-export", source=str(weights))
    assert weights.read_bytes() == before

    class Fixed(torch.nn.Module):  # a model whose graph only works at the traced batch size
        kind, model_name = "image_classifier", "fixed"

        def example_inputs(self, batch=2, length=16, generator=None):
            from zoo.contract import IMAGE_AXES, Inputs

            return Inputs({"images": torch.randn(batch, 4, generator=generator)}, {"images": IMAGE_AXES})

        def forward(self, x):
            return x + float(x.shape[0])  # the batch size as a Python number: traced as the constant 2

    out = tmp_path / "fixed.onnx"
    with pytest.raises(ExportError, match="--static"):
        export_file(Fixed(), out, "onnx")
    assert not out.exists() and not list(tmp_path.glob(".fixed.onnx*"))
    export_file(Fixed(), out, "onnx", static=True)
    assert out.exists()


def test_export_and_convert_never_write_into_their_input(tmp_path):
    """--out inside the folder being read (a save_pretrained folder, a shipped tag's folder) or holding the input
    is refused before anything is written; an ONNX file must end in .onnx."""
    from zoo.export import main as export_main
    from zoo.interop.cli import main as convert_main
    from zoo.pretrained import verified_path

    folder = zoo.create_model("vit_digits").save_pretrained(tmp_path / "vit")
    weights = (folder / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="lies inside the input"):
        export_main(["--model", str(folder), "--out", str(folder / "model.onnx")])
    tag_dir = verified_path("vit_mnist.mnist5k")
    tag_dir = tag_dir if tag_dir.is_dir() else tag_dir.parent
    with pytest.raises(ValueError, match="lies inside the input vit_mnist.mnist5k"):
        export_main(["--model", "vit_mnist.mnist5k", "--out", str(tag_dir / "model.onnx")])
    with pytest.raises(ValueError, match=r"an ONNX file ends in \.onnx"):
        export_main(["--model", str(folder), "--out", str(tmp_path / "model.safetensors")])
    with pytest.raises(ValueError, match="lies inside the input"):
        convert_main(["--from-hf", str(folder), "--out", str(folder / "model.safetensors")])
    with pytest.raises(ValueError, match="holds the input"):
        convert_main(["--to-hf", str(folder / "model.safetensors"), "--out", str(folder)])
    assert (folder / "model.safetensors").read_bytes() == weights and not (folder / "model.onnx").exists()
    assert not (tag_dir / "model.onnx").exists()


def test_static_export_uses_the_dynamo_exporter_and_checks_at_its_fixed_shapes(tmp_path, capsys):
    from zoo.export import main as export_main

    out = tmp_path / "static.onnx"
    assert export_main(["--model", "vit_digits", "--static", "--check", "--batch", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "dynamo exporter, dynamic axes none" in printed.out and "falling back" not in printed.err, printed.err
    assert "at batch 3 (the fixed shapes of --static)" in printed.out


def test_an_example_batch_or_length_of_one_still_exports_dynamic_axes(tmp_path):
    # torch.export specialises sizes 0 and 1: `--batch 1` fell back to TorchScript ("Constraints violated (batch)")
    from zoo.export import export_file

    model = zoo.create_model("bert_tiny", **TINY["bert_tiny"]).eval()
    out = tmp_path / "b1.onnx"
    said = export_file(model, out, batch=1, length=1)
    assert said.startswith("dynamo exporter") and "batch" in said, said
    for batch, length in ((1, 1), (5, 9)):
        assert check_onnx(model, out, example_inputs(model, batch, length, seed=batch)) <= 1e-4


def test_torch_export_file_loads_and_torch_says_nothing_of_its_temporary_name(tmp_path, capfd):
    from zoo.export import export_file

    model = zoo.create_model("bert_tiny", **TINY["bert_tiny"]).eval()
    export_file(model, tmp_path / "m.pt2", fmt="torch-export")
    assert "Expect archive file" not in capfd.readouterr().err  # it was written under a .tmp name, then renamed
    ex = example_inputs(model, 3, 7, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(tmp_path / "m.pt2").module()(*ex.args), model(*ex.args))


def test_an_int8_model_is_refused_in_one_line(tmp_path, capfd):
    """Neither exporter takes torch.ao's dynamic int8 Linear: instead of the TorchScript fallback's graph dump and a
    late error about `quantized::linear_dynamic`, one line says what works, and nothing is written."""
    from zoo.compress import quantize_int8
    from zoo.export import ExportError, export_file

    model = quantize_int8(zoo.create_model("vit_mnist", depth=1).eval(), "torch.ao")
    for fmt, name in (("onnx", "m.onnx"), ("torch-export", "m.pt2")):
        with pytest.raises(ExportError, match="int8 layers .*without --quantize"):
            export_file(model, tmp_path / name, fmt=fmt)
        assert not (tmp_path / name).exists()
    assert "Torch IR graph" not in capfd.readouterr().err


def test_torch_export_failures_are_one_line_that_names_what_works(tmp_path, capfd):
    """torch.export's own errors reached the user raw (a FakeTensor TypeError for the recurrent encoder-decoder, also
    with --static; 'Constraints violated' and torch's advice about mark_dynamic for the LSTM language model), after a
    screen of tracing warnings. Now one line says what works: --static, or ONNX at fixed shapes."""
    from zoo.cli import main

    small = {"embed_dim": 16, "hidden_size": 16, "attn_dim": 16, "vocab_size": 50}
    for name, kwargs, static, words in (
            ("lstm_seq2seq", small, [], r"torch.export cannot trace lstm_seq2seq \(TypeError: .*\); export it to ONNX "
                                        r"instead \(--format onnx --static"),
            ("lstm_seq2seq", small, ["--static"], r"torch.export cannot trace lstm_seq2seq .*--format onnx --static"),
            ("lstm_lm", {"vocab_size": 50, "embed_dim": 16, "hidden_size": 16}, [],
             r"torch.export cannot keep the dynamic axes \['batch', 'sequence'\] of lstm_lm .*; export with --static")):
        out = tmp_path / f"{name}.pt2"
        capfd.readouterr()
        with pytest.raises(SystemExit) as e:
            main(["export", "--model", name, "--model-kwargs", json.dumps(kwargs), "--format", "torch-export",
                  "--out", str(out), *static])
        err = capfd.readouterr().err
        assert e.value.code == 1 and not out.exists(), err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 2 and re.search(words, lines[0]) and "--verbose" in lines[1], err  # no warnings around it
    # what the message says works: the LSTM LM at fixed shapes, in torch.export
    model = zoo.create_model("lstm_lm", vocab_size=50, embed_dim=16, hidden_size=16).eval()
    from zoo.export import export_file

    export_file(model, tmp_path / "lm.pt2", "torch-export", batch=2, length=8, static=True)
    ex = example_inputs(model, 2, 8, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(tmp_path / "lm.pt2").module()(*ex.args), model(*ex.args))


def test_an_opset_the_exporter_cannot_write_is_refused_and_nothing_kept(tmp_path, capfd):
    """--opset 17 (or 9) wrote an opset-18 file and said 'wrote ...': the dynamo exporter's failed down-conversion was
    only logged. --opset 26 wrote a file onnxruntime could not load (with --static unnoticed; without it, the error
    blamed the dynamic axes and said to use --static). The file's opset is checked now, and so is that it loads."""
    import onnx

    from zoo.export import ExportError, export_file

    model = zoo.create_model("vit_digits").eval()
    for opset in (17, 9, 26):
        for static in (False, True):
            out = tmp_path / f"o{opset}{static}.onnx"
            with pytest.raises(ExportError, match=rf"--opset {opset}: the exporter wrote vit_digits at opset 18 .*"
                                                  rf"export with --opset 18") as e:
                export_file(model, out, opset=opset, static=static)
            assert "--static" not in str(e.value) and not out.exists() and not list(tmp_path.iterdir())
    for opset in (18, 21):  # opsets it writes: kept, at that opset, and they run at another batch
        export_file(model, tmp_path / f"o{opset}.onnx", opset=opset)
        assert [o.version for o in onnx.load(tmp_path / f"o{opset}.onnx").opset_import if o.domain == ""] == [opset]
        assert check_onnx(model, tmp_path / f"o{opset}.onnx", example_inputs(model, 3, 8)) <= 1e-4


def test_check_of_a_torch_export_program_runs_it_at_another_batch_and_length(tmp_path, capsys, monkeypatch):
    """`--check` with --format torch-export printed nothing (it only checked ONNX files); now it loads the program
    and runs it at another batch and length, as it runs an ONNX file in onnxruntime."""
    from zoo import export
    from zoo.cli import main

    seen = []
    real = export.check_program
    monkeypatch.setattr(export, "check_program",
                        lambda m, p, ex, **kw: seen.append(tuple(ex.args[0].shape)) or real(m, p, ex, **kw))
    out = tmp_path / "b.pt2"
    with pytest.raises(SystemExit) as e:
        main(["export", "--model", "bert_tiny", "--model-kwargs", json.dumps(TINY["bert_tiny"]), "--format", "torch-export",
              "--out", str(out), "--batch", "2", "--length", "8", "--check"])
    printed = capsys.readouterr().out
    assert e.value.code == 0 and seen == [(3, 11)], (seen, printed)
    line = printed.strip().splitlines()[-1]
    assert line.startswith("the torch.export program vs PyTorch at batch 3: max|delta| = "), printed
    assert float(line.rsplit("= ", 1)[1]) <= 1e-5
    # the number is a real comparison: a program that is not the model's is far off
    other = zoo.create_model("bert_tiny", **TINY["bert_tiny"]).eval()
    assert real(other, out, example_inputs(other, 3, 11)) > 1e-3


def test_a_batch_or_length_below_one_is_refused_before_anything_is_written(tmp_path, capsys):
    """--batch 0 --static wrote an ONNX file fixed at batch 0 (it takes no input at all) and said 'wrote'; --batch -1
    ended in an onnxruntime error blamed on the dynamic axes."""
    from zoo.cli import main

    for args in (["--batch", "0", "--static"], ["--batch", "-1"], ["--length", "0", "--static"]):
        out = tmp_path / "m.onnx"
        with pytest.raises(SystemExit) as e:
            main(["export", "--model", "vit_digits", "--out", str(out), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument {args[0]}: must be an integer >= 1, got {args[1]}" in err, err
        assert not out.exists()


def test_check_prints_the_absolute_max_difference_it_names(tmp_path, capsys):
    """`--check` printed 'max|delta| = X' where X was max|delta| / max(1, max|output|): with logits in the hundreds it
    understated the difference a hundredfold."""
    import onnxruntime as ort

    from zoo.cli import main
    from zoo.weights import save_safetensors

    torch.manual_seed(0)
    model = zoo.create_model("vit_digits").eval()
    with torch.no_grad():
        model.head.weight.mul_(300.0)
    save_safetensors(model, tmp_path / "w.safetensors")
    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit) as e:
        main(["export", "--model", f"vit_digits@{tmp_path / 'w.safetensors'}", "--out", str(out), "--check"])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert e.value.code == 0 and "max|delta| = " in printed, printed
    ex = example_inputs(model, 3, 19, seed=1)  # --check's other batch and length
    with torch.no_grad():
        ref = model(*ex.args)
    got = torch.from_numpy(ort.InferenceSession(str(out)).run(None, {"images": ex.args[0].numpy()})[0])
    absolute = float((got - ref).abs().max())
    assert ref.abs().max() > 100 and absolute > 0
    assert float(printed.rsplit("= ", 1)[1]) == pytest.approx(absolute, rel=0.02)
