"""Model families, one module each. Importing this package imports every module in it, and each
module registers its variants with `zoo.registry.register_model`."""
import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_mod}")
