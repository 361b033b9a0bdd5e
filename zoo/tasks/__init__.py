"""LightningModules: one per training task, sharing the optimiser recipe in `ZooTask`."""
from .base import ZooTask
from .image import ImageClassification

__all__ = ["ZooTask", "ImageClassification"]
