"""zoo: transformer variants on one shared core, created by name, trained through Lightning."""
from .registry import create_model, get_config, list_models, model_info, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "get_config", "list_models", "model_info", "register_model"]

_INTEROP = ("from_hf", "from_timm", "to_hf")


def __getattr__(name):  # lazy: importing zoo does not import transformers / timm
    if name in ("list_pretrained", "pretrained_cfg"):
        from . import pretrained

        return getattr(pretrained, name)
    if name in ("from_pretrained", "hub"):
        import importlib

        hub = importlib.import_module(f"{__name__}.hub")  # not `from . import hub`: that asks this function for "hub" again
        return hub.from_pretrained if name == "from_pretrained" else hub
    if name == "get_tokenizer":  # open_clip-style: the tokenizer of a tag, a directory or a checkpoint
        from .data.tokenizers import load_tokenizer_from

        return load_tokenizer_from
    if name in ("resolve_data_config", "create_transform"):
        from . import transforms

        return getattr(transforms, name)
    if name in ("runs", "contract", "load_run"):
        import importlib

        module = importlib.import_module(f"{__name__}.{'runs' if name == 'load_run' else name}")
        return module.load_run if name == "load_run" else module
    if name in _INTEROP:
        from . import interop

        return getattr(interop, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
