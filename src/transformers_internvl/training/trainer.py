"""`transformers.Trainer` with the original's per-sample loss weighting (`loss_reduction` sample / square)."""

from __future__ import annotations

from transformers import Trainer

from ..modeling.causal_lm_loss import weighted_lm_loss
from .length_grouping import has_estimates, length_grouped_sampler


class InternVLTrainer(Trainer):
    """A `Trainer` that understands the collators' `loss_weight` (`loss_reduction="sample"|"square"`).

    Batches without `loss_weight` (token averaging) use the model's own loss, exactly as the plain `Trainer`.
    With `loss_weight`, the loss is `Σ CE·w / Σ w` over the batch (`causal_lm_loss.weighted_lm_loss`, original
    `InternVLChatModel.forward`); each process normalises by its own Σw, or, with `loss_reduction_all_gather=True`
    (the original's option, used by its InternVL 2.5 stage scripts), by Σw averaged over the processes, so that the
    gradient is the weighted mean over the global batch. With gradient accumulation, the weighted loss of an optimizer
    step is the mean of its micro-batch losses, as under the original's Trainer (accelerate / DeepSpeed divide each
    micro-batch loss by the accumulation steps); token averaging keeps transformers' rule (all the step's supervised
    tokens averaged at once, `num_items_in_batch`).

    `train_sampling_strategy="group_by_length"` (the original's `--group_by_length True`) on an
    `InternVLSupervisedDataset` (or a `ConcatDataset` of them) groups rows by the original's length estimate
    (`training.length_grouping`: a row's `length` field, else its text tokens plus a full tile budget of image
    tokens) with transformers' `LengthGroupedSampler`, without building any sample first.
    """

    def __init__(self, *args, loss_reduction_all_gather: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_reduction_all_gather = bool(loss_reduction_all_gather)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and has_estimates(dataset):
            return length_grouped_sampler(dataset, self.args.train_batch_size * self.args.gradient_accumulation_steps)
        return super()._get_train_sampler(train_dataset)

    def _trainer_divides_by_accumulation(self, num_items_in_batch) -> bool:
        """Whether `Trainer.training_step` divides the loss by the accumulation steps itself (its rule)."""
        if self.loss_is_scaled_for_ga is not None:
            return not self.loss_is_scaled_for_ga
        return not (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "loss_weight" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        loss_weight = inputs.pop("loss_weight")
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = weighted_lm_loss(outputs.logits, labels, loss_weight, all_gather=self.loss_reduction_all_gather)
        if num_items_in_batch is not None and not self._trainer_divides_by_accumulation(num_items_in_batch):
            # a per-micro-batch mean: the Trainer took it for a sum over the step's tokens and would not divide it
            loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)  # set by the training loop
        return (loss, outputs) if return_outputs else loss
