"""LightningDataModules for offline data sets."""
from .images import MNIST5k, Digits, ImageDataModule

__all__ = ["MNIST5k", "Digits", "ImageDataModule"]
