"""Supervised fine-tuning utilities: InternVL-format data, labels as the original, collators, training stages."""
