"""`transformers.Trainer` with the original's per-sample loss weighting (`loss_reduction` sample / square)."""

from __future__ import annotations

from transformers import Trainer

from .collator import weighted_lm_loss


class InternVLTrainer(Trainer):
    """A `Trainer` that understands the collators' `loss_weight` (`loss_reduction="sample"|"square"`).

    Batches without `loss_weight` (token averaging) use the model's own loss, exactly as the plain `Trainer`.
    With `loss_weight`, the loss is `Σ CE·w / Σ w` over the batch (`collator.weighted_lm_loss`, original
    `InternVLChatModel.forward`); the original's `loss_reduction_all_gather` (averaging Σw over ranks) is not
    reproduced: each process normalises by its own Σw.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "loss_weight" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        loss_weight = inputs.pop("loss_weight")
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = weighted_lm_loss(outputs.logits, labels, loss_weight)
        return (loss, outputs) if return_outputs else loss
