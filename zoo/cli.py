"""The `zoo` command.

    zoo fit --config configs/vit_mnist.yaml        # LightningCLI: fit / validate / test / predict
    zoo models "vit_*"                             # list registered models with parameter counts
    zoo info vit_small_patch16_224                 # hyper-parameters and paper of one model
Other subcommands (bench, export, viz, compress, ...) register themselves in EXTRA_COMMANDS.
"""
from __future__ import annotations

import json
import sys
from typing import Callable

import lightning as L
from lightning.pytorch.cli import LightningCLI

# name -> (help, main(argv)); filled by the modules that provide more subcommands.
EXTRA_COMMANDS: dict[str, tuple[str, Callable[[list[str]], int | None]]] = {}


class ZooCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after `fit`, evaluate the best checkpoint on the test split and print the metrics")
        # The data decides what the model must accept (classes, channels, vocabulary, ...).
        parser.link_arguments("data", "model.init_args.data_overrides", compute_fn=lambda dm: dm.model_overrides,
                              apply_on="instantiate")

    def instantiate_trainer(self, **kwargs):
        # Defaults every run gets: atomic checkpoint writes and step-seeded randomness (exact resumption).
        from .callbacks import default_trainer_extras

        trainer = super().instantiate_trainer(**kwargs)
        default_trainer_extras(trainer)
        return trainer

    def after_fit(self):
        if self.config[self.subcommand].get("test_after_fit") and not self.trainer.fast_dev_run:
            ckpt = "best" if self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)

    def after_predict(self):
        """Print one line per prediction (texts, or class + probability)."""
        for batch in self.trainer.predict_loop.predictions or []:
            for line in _prediction_lines(batch):
                print(line)


def _prediction_lines(batch) -> list[str]:
    if isinstance(batch, dict) and "pred" in batch:
        return [f"{int(p)}\t{float(q):.4f}" for p, q in zip(batch["pred"].tolist(), batch["prob"].tolist())]
    if isinstance(batch, (list, tuple)):
        return [str(x) for x in batch]
    return [str(batch)]


def lightning_main(args: list[str] | None = None, run: bool = True) -> ZooCLI:
    from .tasks.base import ZooTask

    return ZooCLI(
        ZooTask,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"} if _has_omegaconf() else None,
    )


def _has_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True


def _models(argv: list[str]) -> None:
    from . import list_models, model_info

    pattern = argv[0] if argv else None
    for name in list_models(pattern):
        info = model_info(name)
        print(f"{name:34s} {info['family']:12s} {info['params'] / 1e6:9.2f}M  {info['description']}")


def _info(argv: list[str]) -> None:
    from . import model_info

    if not argv:
        raise SystemExit("usage: zoo info MODEL_NAME")
    print(json.dumps(model_info(argv[0]), indent=2))


def _load_extra_commands() -> None:
    import importlib

    for module in ("zoo.bench.cli", "zoo.interop.cli", "zoo.viz", "zoo.compress", "zoo.export"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    EXTRA_COMMANDS.setdefault("models", ("list registered models", _models))
    EXTRA_COMMANDS.setdefault("info", ("show one model's hyper-parameters", _info))
    _load_extra_commands()
    if argv and argv[0] in EXTRA_COMMANDS:
        rc = EXTRA_COMMANDS[argv[0]][1](argv[1:])
        raise SystemExit(rc or 0)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("more subcommands: " + ", ".join(sorted(EXTRA_COMMANDS)))
    lightning_main(argv)


if __name__ == "__main__":
    main()
