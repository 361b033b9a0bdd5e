"""Model families. Importing a module registers its variants."""
from . import vit  # noqa: F401
