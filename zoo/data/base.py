"""What every zoo data module shares: data sets kept in `self.splits`, served by plain DataLoaders."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader


class SplitDataModule(L.LightningDataModule):
    """Subclasses fill `self.splits` ("train", "val", "test", optionally "predict") in `setup()` and set
    `self.batch_size` / `self.num_workers`; a `collate(rows)` method, if defined, batches the rows."""

    predict_split = "test"
    batch_size: int
    num_workers: int = 0
    # the user's inputs in prediction order (image files), where they have names: `zoo predict` ends each line with one
    predict_names: list[str] | None = None

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        ds = self.splits[split]
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=getattr(self, "collate", None), drop_last=shuffle and len(ds) > self.batch_size)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader(self.predict_split)
