"""modeling sub-package of transformers_internvl."""
