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
        sampler = None if shuffle else self._evaluation_sampler(ds)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=getattr(self, "collate", None), drop_last=shuffle and len(ds) > self.batch_size)

    def _evaluation_sampler(self, ds):
        """Under several processes, each sample of an evaluation split on exactly one of them. Lightning's own
        DistributedSampler pads the split to a multiple of the process count with repeated samples, so a metric
        over 2 processes counted some samples twice (the digits validation split: 180 samples for its 179, val/acc
        28/180 where one process gave 27/179). The shards differ by at most one sample; metrics and sync_dist
        means are sums over the processes, so they equal the one-process figure."""
        trainer = getattr(self, "trainer", None)
        kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
        connector = getattr(trainer, "_accelerator_connector", None)
        if not kwargs or kwargs.get("num_replicas", 1) <= 1 or not getattr(connector, "use_distributed_sampler", True):
            return None
        if len(ds) < kwargs["num_replicas"]:
            return None  # every process needs a batch; Lightning's padding it is
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        return UnrepeatedDistributedSampler(ds, shuffle=False, **kwargs)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader(self.predict_split)
