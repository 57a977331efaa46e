"""A pipeline where a torch ``DataLoader`` / ``IterableDataset`` is expected.

:class:`PipelineLoader` is a ``torch.utils.data.IterableDataset`` with the parts of the
DataLoader surface that loops and frameworks touch (``len``, ``batch_size``,
``dataset``, ``set_epoch``, ``state_dict``/``load_state_dict`` as in torchdata's
``StatefulDataLoader``): Lightning's ``fit(train_dataloaders=...)``, a plain ``for`` loop,
or ``DataLoader(loader, batch_size=None)`` when a real DataLoader object is required
(with ``num_workers=0``: the pipeline brings its own parallelism).

Example::

    loader = hm.data.from_tensors((x, y)).shuffle(len(x), seed=0).batch(32).as_dataloader()
    for epoch in range(3):
        for xb, yb in loader:   # each pass is the next epoch
            ...
"""

from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import IterableDataset, get_worker_info


class PipelineLoader(IterableDataset):
    """A Pipeline with a DataLoader's surface; every ``iter`` is one epoch, in order.

    Example::

        loader = PipelineLoader(pipe); len(loader); loader.set_epoch(2); next(iter(loader))
    """

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ValueError("a PipelineLoader inside a DataLoader with num_workers > 1 would "
                             "repeat every element per worker: use num_workers=0 (the pipeline "
                             "parallelises itself with map(num_parallel_calls=...))")
        return iter(self.pipeline)

    def __len__(self) -> int:
        return len(self.pipeline)

    @property
    def dataset(self) -> "PipelineLoader":
        """What frameworks read as ``loader.dataset`` (this object)."""
        return self

    @property
    def batch_size(self) -> int | None:
        """The size of the pipeline's last ``batch`` stage, None if it is not batched."""
        if not self.pipeline.is_batched:
            return None
        return [n for n in self.pipeline._chain() if n.kind == "batch"][-1].batch_size

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` next (as ``DistributedSampler.set_epoch``)."""
        self.pipeline.set_epoch(epoch)

    def state_dict(self) -> dict:
        """The pipeline's resumable position (plain data)."""
        return self.pipeline.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``: the next ``iter`` yields exactly the rest of that epoch."""
        self.pipeline.load_state_dict(state)

    def __repr__(self) -> str:
        return f"PipelineLoader({self.pipeline!r})"
