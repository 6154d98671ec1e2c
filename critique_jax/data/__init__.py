"""Data layer: TFDS task datasets (array_record, no TensorFlow) and resumable batching."""

from critique_jax.data.iterator import BatchIterator
from critique_jax.data.tfds_builder import (
    CritiqueTaskDataset,
    Example,
    TaskDatasetConfig,
    TaskSource,
    build_task_dataset,
    decode_record,
)

__all__ = [
    "BatchIterator",
    "CritiqueTaskDataset",
    "Example",
    "TaskDatasetConfig",
    "TaskSource",
    "build_task_dataset",
    "decode_record",
]
