"""zoo: transformer variants on one shared core, created by name, trained through Lightning."""
from .registry import create_model, get_config, list_models, model_info, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "get_config", "list_models", "model_info", "register_model"]
