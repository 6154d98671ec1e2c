"""Deterministic, resumable batching over a random-access source.

Epoch ``e`` visits the records in the order ``np.random.default_rng([seed, e]).permutation(n)``
(or ``0..n-1`` with ``shuffle=False``) and cuts it into ``n // batch_size`` global batches
(the remainder is dropped). With ``process_count`` processes, process ``i`` yields records
``[i * L, (i + 1) * L)`` of every global batch, ``L = batch_size // process_count``, so the
processes together read each global batch exactly once and in step.

The state ``{"epoch", "position", ...}`` (``position``: global batches already yielded in the
epoch) is JSON-serialisable; :meth:`BatchIterator.set_state` resumes at exactly the next batch.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol, Sequence

import numpy as np


class RandomAccessSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


_STATE_KEYS = ("epoch", "position", "seed", "batch_size", "num_records")


class BatchIterator:
    """Yields this process's slice (a list of ``batch_size // process_count`` records) of each
    global batch.

    source: random-access records (``len`` and ``[i]``; ``__getitems__`` is used when present).
    batch_size: global batch size (all processes together).
    num_epochs: stop after this many epochs (None: forever).
    """

    def __init__(
        self,
        source: RandomAccessSource,
        batch_size: int,
        seed: int,
        *,
        shuffle: bool = True,
        num_epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        n = len(source)
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size}: expected > 0")
        if process_count <= 0:
            raise ValueError(f"process_count={process_count}: expected > 0")
        if not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index={process_index}: expected 0 <= index < process_count={process_count}"
            )
        if batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by process_count={process_count}"
            )
        if n < batch_size:
            raise ValueError(f"source has {n} records, fewer than batch_size={batch_size}")
        if num_epochs is not None and num_epochs <= 0:
            raise ValueError(f"num_epochs={num_epochs}: expected > 0 or None")
        self._source = source
        self.batch_size = batch_size
        self.local_batch_size = batch_size // process_count
        self.seed = seed
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.process_index = process_index
        self.process_count = process_count
        self.num_records = n
        self.batches_per_epoch = n // batch_size
        self._epoch = 0
        self._position = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_records)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_records)

    def get_state(self) -> dict[str, int]:
        """JSON-serialisable position: ``epoch``, ``position`` (batches done in the epoch) and
        the settings a resume must match (``seed``, ``batch_size``, ``num_records``)."""
        return {
            "epoch": self._epoch,
            "position": self._position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_records": self.num_records,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes from :meth:`get_state`'s output; mismatched settings raise ValueError."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise KeyError(f"iterator state lacks {missing}; got keys {sorted(state)}")
        for key in ("seed", "batch_size", "num_records"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"iterator state has {key}={state[key]}, this iterator has "
                    f"{key}={getattr(self, key)}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.batches_per_epoch:
            raise ValueError(
                f"iterator state epoch={epoch}, position={position}: expected epoch >= 0 and "
                f"0 <= position <= {self.batches_per_epoch}"
            )
        self._epoch, self._position = epoch, position
        self._order = self._epoch_order(epoch)

    def __iter__(self) -> Iterator[list[Any]]:
        return self

    def __next__(self) -> list[Any]:
        if self._position == self.batches_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
            self._order = self._epoch_order(self._epoch)
        if self.num_epochs is not None and self._epoch >= self.num_epochs:
            raise StopIteration
        start = self._position * self.batch_size + self.process_index * self.local_batch_size
        keys = [int(k) for k in self._order[start : start + self.local_batch_size]]
        self._position += 1
        return _read(self._source, keys)


def _read(source: RandomAccessSource, keys: Sequence[int]) -> list[Any]:
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(keys)) if getitems is not None else [source[k] for k in keys]
