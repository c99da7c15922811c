"""TRL's `SFTTrainer` on InternVL data with this package's dataset and collators (checked with TRL 1.16 on
transformers 5.24).

`SFTTrainer` accepts only `datasets.Dataset` / `IterableDataset` and would otherwise tokenize the rows itself (its
`assistant_only_loss` puts the mask on `<IMG_CONTEXT>` positions once an image is present, see
`training/labels.py`). Here it gets a `datasets.Dataset` of row indices and a collator that fetches the rows from
`InternVLSupervisedDataset` (rendering, tiling and labels as the original) and batches them with
`InternVLDataCollator` / `InternVLPackingCollator`; TRL's own dataset preparation is skipped
(`dataset_kwargs={"skip_prepare_dataset": True}`, `remove_unused_columns=False`, both set by
`internvl_sft_config`). Rows are still loaded lazily, in the data loader's workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import datasets
from trl import SFTConfig, SFTTrainer

from .length_grouping import has_estimates
from .trainer import InternVLTrainer

INDEX_COLUMN = "index"


class IndexedCollator:
    """Collate `{"index": i}` features by fetching `dataset[i]` and passing the samples to `collator`.

    Raises:
        KeyError: a feature has no `index` (the dataset given to the trainer is not `index_dataset(...)`).
        IndexError: an index outside `dataset`.
    """

    def __init__(self, dataset: Sequence, collator: Callable[[list[dict]], dict[str, Any]]):
        self.dataset = dataset
        self.collator = collator

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        samples = []
        for feature in features:
            if INDEX_COLUMN not in feature:
                raise KeyError(f"Feature without {INDEX_COLUMN!r}: {sorted(feature)}; train on `index_dataset(...)`.")
            index = int(feature[INDEX_COLUMN])
            if not 0 <= index < len(self.dataset):
                raise IndexError(f"Row index {index} outside the dataset of {len(self.dataset)} samples.")
            samples.append(self.dataset[index])
        return self.collator(samples)


def index_dataset(dataset: Sequence, length_column: str | None = None) -> datasets.Dataset:
    """A `datasets.Dataset` with one column `index` = 0..len(dataset)-1, and with `length_column` the rows' length
    estimates (`training.length_grouping.estimated_lengths`), which transformers' length-grouping samplers read."""
    columns = {INDEX_COLUMN: list(range(len(dataset)))}
    if length_column is not None:
        from .length_grouping import estimated_lengths

        columns[length_column] = estimated_lengths(dataset)
    return datasets.Dataset.from_dict(columns)


def internvl_sft_config(**kwargs) -> SFTConfig:
    """`SFTConfig` with what this collator needs: no TRL dataset preparation, keep all columns; `bf16` defaults to
    `False` (TRL's default `True` fails on CPU); anything else as given."""
    kwargs.setdefault("bf16", False)
    kwargs["remove_unused_columns"] = False
    dataset_kwargs = dict(kwargs.pop("dataset_kwargs", None) or {})
    dataset_kwargs["skip_prepare_dataset"] = True
    return SFTConfig(dataset_kwargs=dataset_kwargs, **kwargs)


class InternVLSFTTrainer(InternVLTrainer, SFTTrainer):
    """`SFTTrainer` with the per-sample loss weighting of `InternVLTrainer` (`loss_reduction="sample"|"square"`);
    token-averaged batches go through `SFTTrainer.compute_loss` (its token-accuracy and entropy metrics included)."""


def sft_trainer(model, args: SFTConfig, dataset: Sequence, collator, processing_class=None, **kwargs):
    """An `InternVLSFTTrainer` training `model` on `dataset` (an `InternVLSupervisedDataset`) batched by
    `collator`; `kwargs` go to `SFTTrainer`. With `train_sampling_strategy` `"group_by_length"` or
    `"batch_rebalance"`, the index dataset carries the rows' length estimates in `args.length_column_name`."""
    grouped = getattr(args, "train_sampling_strategy", "random") in ("group_by_length", "batch_rebalance")
    length_column = args.length_column_name if grouped and has_estimates(dataset) else None
    return InternVLSFTTrainer(
        model=model,
        args=args,
        train_dataset=index_dataset(dataset, length_column),
        data_collator=IndexedCollator(dataset, collator),
        processing_class=processing_class,
        **kwargs,
    )


__all__ = ["IndexedCollator", "InternVLSFTTrainer", "index_dataset", "internvl_sft_config", "sft_trainer"]
