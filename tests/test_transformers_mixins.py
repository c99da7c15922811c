"""transformers' own generic model and config tests (`ModelTesterMixin`, `ConfigTester`) run on this package.

The mixins are not copied here: they come from the `tests/` folder of the transformers source distribution of the
installed version, named by the environment variable `TRANSFORMERS_TESTS_DIR` (`.ci/run` downloads and extracts it)::

    pip download --no-deps --no-binary=:all: transformers==$(python -c "import transformers as t; print(t.__version__)")
    tar xzf transformers-*.tar.gz && export TRANSFORMERS_TESTS_DIR=$PWD/transformers-<version>/tests

Without the variable the module is skipped. The sdist ships `test_modeling_common.py` and
`test_configuration_common.py` but not the modules they import relatively (`generation/test_utils.py`,
`exporters/test_export.py`, `utils/test_configuration_utils.py`); when those are absent they are replaced by empty
stand-ins, so the generate tests (`GenerationTesterMixin`) and the `torch.export` tests (`ExportTesterMixin`) are not
part of this run (`tests/test_generation.py` and `tests/test_transformers_conventions.py` cover `generate`). A full
transformers checkout (a `tests/` folder with `__init__.py`) is imported as it is, generate tests included.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import types
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import tiny_text_config, tiny_vision_config
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, MODEL_MAPPING_NAMES

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLConfig, InternVLForConditionalGeneration, InternVLModel

TESTS_DIR_VARIABLE = "TRANSFORMERS_TESTS_DIR"
_PACKAGE = "_transformers_common_tests"
# Relative imports of the two common modules that the sdist does not ship: module -> names it must provide.
_SDIST_ABSENT_MODULES = {
    "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
    "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
    # Only read by `ConfigTester.check_config_arguments_init`, which returns early for composite configs.
    "utils.test_configuration_utils": {"config_common_kwargs": {}},
}


def _import_transformers_tests(tests_dir: Path) -> tuple[types.ModuleType, types.ModuleType, bool]:
    """`(test_modeling_common, test_configuration_common, has_generation_tests)` imported from `tests_dir`.

    A folder with `__init__.py` (a git checkout) is imported as a package. An sdist's `tests/` has no `__init__.py`:
    the two modules are linked into a temporary package next to stand-ins for the modules the sdist leaves out.
    """
    required = ("test_modeling_common.py", "test_configuration_common.py")
    missing = [name for name in required if not (tests_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"${TESTS_DIR_VARIABLE} ({tests_dir}) must be the `tests/` folder of a transformers source distribution; "
            f"it lacks {missing}."
        )
    if _PACKAGE not in sys.modules:
        if (tests_dir / "__init__.py").is_file():
            package_dir = tests_dir
        else:
            package_dir = Path(tempfile.mkdtemp(prefix="transformers-tests-"))
            atexit.register(shutil.rmtree, package_dir, ignore_errors=True)
            (package_dir / "__init__.py").write_text("")
            for name in required:
                (package_dir / name).symlink_to(tests_dir / name)
        spec = importlib.util.spec_from_file_location(
            _PACKAGE, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PACKAGE] = package
        spec.loader.exec_module(package)
        for dotted, names in _SDIST_ABSENT_MODULES.items():
            if (package_dir / (dotted.replace(".", "/") + ".py")).is_file():
                continue
            parent = _PACKAGE
            for part in dotted.split("."):
                name = f"{parent}.{part}"
                if name not in sys.modules:
                    module = types.ModuleType(name)
                    module.__path__ = []
                    sys.modules[name] = module
                parent = name
            sys.modules[parent].__dict__.update(names)
    modeling_common = importlib.import_module(f"{_PACKAGE}.test_modeling_common")
    configuration_common = importlib.import_module(f"{_PACKAGE}.test_configuration_common")
    generation = sys.modules.get(f"{_PACKAGE}.generation.test_utils")
    has_generation_tests = (
        generation is not None
        and hasattr(generation, "GenerationTesterMixin")
        and bool(getattr(generation, "__file__", None))
    )
    return modeling_common, configuration_common, has_generation_tests


if not os.environ.get(TESTS_DIR_VARIABLE):
    pytest.skip(
        f"${TESTS_DIR_VARIABLE} is not set (the `tests/` folder of the transformers sdist; `.ci/run` sets it)",
        allow_module_level=True,
    )

_modeling_common, _configuration_common, HAS_GENERATION_TESTS = _import_transformers_tests(
    Path(os.environ[TESTS_DIR_VARIABLE]).resolve()
)
ModelTesterMixin = _modeling_common.ModelTesterMixin
ConfigTester = _configuration_common.ConfigTester
GenerationTesterMixin = _modeling_common.GenerationTesterMixin
floats_tensor = _modeling_common.floats_tensor
ids_tensor = _modeling_common.ids_tensor


class InternVLTinyModelTester:
    """Tiny random InternVL 2.5 (InternViT with RMSNorm + QK-norm, Qwen2 LLM) and inputs for the common tests.

    56 px tiles of 14 px patches give 4x4 patches, pixel-unshuffled (0.5, "v2") to 4 LLM tokens per tile; every
    sample has one tile whose 4 `<IMG_CONTEXT>` placeholders open the sequence.
    """

    def __init__(self, parent, batch_size: int = 3, text_length: int = 7) -> None:
        self.parent = parent
        self.batch_size = batch_size
        # Outside the ids 0..4 the common tests use to pad batches with random rows.
        self.image_token_id = 5
        self.text_only = False
        self.pad_token_id = 0
        self.is_training = True
        self.num_channels = 3
        self.image_size = 56
        self.patch_size = 14
        self.vision_config = tiny_vision_config(
            self.image_size, patch_size=self.patch_size, qkv_bias=True, qk_normalization=True, norm_type="rms_norm"
        )
        self.text_config = tiny_text_config(
            "qwen2", model_type="qwen2", tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0
        )
        self.image_seq_length = (self.image_size // self.patch_size) ** 2 // 4
        self.seq_length = text_length + self.image_seq_length
        self.vocab_size = self.text_config["vocab_size"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.num_attention_heads = self.text_config["num_attention_heads"]

    def get_config(self) -> InternVLConfig:
        return InternVLConfig(
            vision_config=self.vision_config,
            text_config=self.text_config,
            image_token_id=self.image_token_id,
            ps_version="v2",
            template="internvl2_5",
        )

    def prepare_config_and_inputs(self) -> tuple[InternVLConfig, torch.Tensor]:
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self) -> tuple[InternVLConfig, dict[str, torch.Tensor]]:
        config, pixel_values = self.prepare_config_and_inputs()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_ids[input_ids == self.image_token_id] = self.pad_token_id
        if self.text_only:
            # Tests that pass only `input_ids` (and pad the batch with random rows): no image slots, since
            # `forward` refuses `<IMG_CONTEXT>` tokens without `pixel_values` (issue 12).
            return config, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        input_ids[:, : self.image_seq_length] = self.image_token_id
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": pixel_values.to(input_ids.device),
        }
        return config, inputs


_generation_bases = (GenerationTesterMixin,) if HAS_GENERATION_TESTS else ()


class InternVLTransformersCommonTest(ModelTesterMixin, *_generation_bases, unittest.TestCase):
    all_model_classes = (InternVLForConditionalGeneration, InternVLModel)
    # Without transformers' generation tests (absent from the sdist) no class is declared generative, as the mixin's
    # `test_generation_tester_mixin_inheritance` demands; `tests/test_generation.py` covers `generate` then.
    all_generative_model_classes = (InternVLForConditionalGeneration,) if HAS_GENERATION_TESTS else ()
    # A vision-language model: `vision_config` + `text_config`, each with its own attention implementation.
    _is_composite = True
    # The mixin dates models by a "# Copyright YYYY" header that this package's files do not carry; the check of
    # `_init_weights` must run (transformers' own InternVL, from 2025, runs it).
    test_can_init_all_missing_weights_before_2023 = True

    # These tests run `forward` on `input_ids` alone (random ids, or the tester's ids padded with random rows), with
    # no `pixel_values`; `forward` refuses `<IMG_CONTEXT>` tokens without tiles (issue 12), so their ids hold none.
    _TEXT_ONLY_TESTS = ("test_eager_matches_sdpa_inference", "test_model_rope_scaling_from_config")

    def setUp(self) -> None:
        self.model_tester = InternVLTinyModelTester(self)
        # The mixins tell a base model from a model with a head by class name, through transformers' own name tables
        # (which list only transformers' models): list this package's classes there for the duration of a test.
        for table, name in (
            (MODEL_MAPPING_NAMES, InternVLModel.__name__),
            (MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, InternVLForConditionalGeneration.__name__),
        ):
            patcher = mock.patch.dict(table, {InternVLConfig.model_type: name})
            patcher.start()
            self.addCleanup(patcher.stop)
        self.config_tester = ConfigTester(self, config_class=InternVLConfig, has_text_modality=False)
        if self._testMethodName.startswith(self._TEXT_ONLY_TESTS):
            self.model_tester.text_only = True
            image_token_id, pad_token_id = self.model_tester.image_token_id, self.model_tester.pad_token_id
            original_ids_tensor = _modeling_common.ids_tensor

            def ids_without_image_tokens(*args, **kwargs):
                ids = original_ids_tensor(*args, **kwargs)
                return ids.masked_fill(ids == image_token_id, pad_token_id)

            _modeling_common.ids_tensor = ids_without_image_tokens
            self.addCleanup(setattr, _modeling_common, "ids_tensor", original_ids_tensor)

    def test_config(self) -> None:
        self.config_tester.run_common_tests()

    def test_reverse_loading_mapping(self) -> None:
        # The original layout is the chat model's (`language_model.model.*`, `language_model.<head>.*`): the base
        # model (`InternVLChatBaseModel`) saves its own module tree and loads original checkpoints through the
        # `base_model_prefix`, as transformers' Llava does (the mixin's `skip_base_model` case).
        super().test_reverse_loading_mapping(skip_base_model=True)
