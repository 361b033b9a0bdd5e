"""`zoo convert`: turn an ecosystem checkpoint on disk into a zoo model file, or a zoo model into a transformers directory.

    zoo convert --from-hf ./bert-dir --out bert.safetensors
    zoo convert --from-timm vit.safetensors --arch vit_small_patch16_224 --out vit.safetensors
    zoo convert --to-hf bert.safetensors --out ./hf-dir                  # a file written by zoo convert
    zoo convert --to-hf ckpt.safetensors --model bert_base --out ./hf-dir # zoo weights of a registered model
Load a converted file with `zoo.from_pretrained(path)` (or `zoo.interop.load_converted(path)`); `zoo export --model
path` and `zoo predict --model path` take it too.
"""
from __future__ import annotations

import argparse
import ast



def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="zoo convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR", help="a directory written by transformers' save_pretrained")
    src.add_argument("--from-timm", metavar="FILE", help="a timm ViT checkpoint (.safetensors or weights-only .pth)")
    src.add_argument("--to-hf", metavar="FILE", help="zoo weights (.safetensors), a zoo fit checkpoint or a save_pretrained "
                     "folder, to write as a transformers directory")
    p.add_argument("--arch", help="timm architecture name for --from-timm, e.g. vit_small_patch16_224")
    p.add_argument("--timm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model argument for --from-timm, e.g. img_size=384 (repeatable)")
    p.add_argument("--model", help="for --to-hf: the registered zoo model the weights belong to (if the file lacks zoo metadata)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="for --to-hf --model: a config override of the run that saved the weights (repeatable)")
    p.add_argument("--out", required=True, help="output .safetensors file (from-*; never a folder) or directory (--to-hf)")
    return p


def _kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from ..registry import count_parameters
    from ..weights import refuse_overwriting_input

    refuse_overwriting_input(args.out, args.to_hf, args.from_hf, args.from_timm)
    from .files import load_converted, read_metadata, registered_name, save_converted

    if args.to_hf:
        from pathlib import Path

        from . import to_hf
        from ..runs import describes_model, load_run

        if args.model:
            import zoo

            model = zoo.create_model(args.model, pretrained=args.to_hf, **_kv(args.set)).eval()
        elif Path(args.to_hf).suffix == ".safetensors" and Path(args.to_hf).is_file() and "zoo_class" in read_metadata(args.to_hf):
            model = load_converted(args.to_hf)
        elif describes_model(args.to_hf):  # a zoo record: save_run's safetensors, a zoo fit checkpoint or run folder,
            model = load_run(args.to_hf).model  # a save_pretrained folder
        elif Path(args.to_hf).is_dir():
            from ..hub import foreign_dir_problem

            problem = foreign_dir_problem(args.to_hf)  # a transformers folder already, or a damaged config.json
            raise SystemExit(f"{args.to_hf} is a folder that holds no zoo model"
                             + (f" ({problem})" if problem else ": pass the zoo weights file (.safetensors) or a "
                                                                "save_pretrained folder"))
        else:
            raise SystemExit(f"{args.to_hf} has no zoo metadata: pass --model NAME (and --set KEY=VALUE overrides)")
        to_hf(model, args.out)
        print(f"wrote {type(model).__name__} as a transformers directory to {args.out}")
        return 0
    if not args.out.endswith(".safetensors"):  # never a folder ("out/" was written as a file named out)
        raise SystemExit(f"--out {args.out}: a converted model is one .safetensors file (e.g. --out model.safetensors)")
    if args.from_hf:
        from . import from_hf

        model, source = from_hf(args.from_hf), f"transformers:{args.from_hf}"
    else:
        from . import from_timm

        if not args.arch:
            raise SystemExit("--from-timm needs --arch, the timm architecture name (e.g. vit_small_patch16_224)")
        model, source = from_timm(args.from_timm, arch=args.arch, **_kv(args.timm_arg)), f"timm:{args.arch}:{args.from_timm}"
    save_converted(model, args.out, source=source)
    name = registered_name(model)
    same = f"; same config as zoo model {name!r}" if name else ""
    print(f"wrote {type(model).__name__} ({count_parameters(model) / 1e6:.2f}M parameters{same}) to {args.out}; "
          f"load it with zoo.from_pretrained({args.out!r})")
    return 0
