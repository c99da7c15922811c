"""The package's layering (modeling imports neither processing nor conversion), the `InternVLChat*` / `InternVision*`
class names with their old aliases, the load-time tokenizer-file ids, and chat()'s prompt renderer on templates that
are not in the fixtures."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from helpers import QWEN2_DIR
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, GenerationConfig

import transformers_internvl
from transformers_internvl.chat_templates import IMAGE_CONTEXT_TOKEN
from transformers_internvl.modeling.chat_prompts import build_batch_chat_prompts, build_chat_prompt
from transformers_internvl.modeling.conversation import (
    CONV_TEMPLATES,
    Conversation,
    get_conv_template,
    register_conv_template,
)
from transformers_internvl.modeling.tokenizer_files import (
    add_template_stop_token,
    apply_tokenizer_file_ids,
    find_added_token_id,
)

PACKAGE = Path(transformers_internvl.__file__).parent


def _imported_package_modules(path: Path) -> set[str]:
    """The `transformers_internvl` sub-packages a module imports (top level and inside functions)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 1 for modeling/x.py, 0 for a module of the package root
    return _imported_package_modules_of_source(path.read_text(encoding="utf-8"), depth)


def _imported_package_modules_of_source(source: str, depth: int) -> set[str]:
    """The `transformers_internvl` sub-packages (and root modules) that `source` imports, for a module `depth`
    packages below `transformers_internvl`: `from ..processing import x`, `from .. import processing`,
    `from transformers_internvl import processing`, `import transformers_internvl.processing`, ..."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level > depth:  # relative to the package root (or above it)
                parts = (node.module or "").split(".") if node.module else []
            elif node.level == 0 and (node.module or "").split(".")[0] == "transformers_internvl":
                parts = node.module.split(".")[1:]
            else:
                continue  # another package, or a sibling inside the same sub-package
            if parts:
                found.add(parts[0])
            else:  # `from .. import processing` / `from transformers_internvl import processing`
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1] for alias in node.names if alias.name.startswith("transformers_internvl.")
            )
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..processing import x", {"processing"}),
        ("from ..processing.tiling import plan_tiles", {"processing"}),
        ("from .. import processing", {"processing"}),
        ("from .. import conversion as c, chat_templates", {"conversion", "chat_templates"}),
        ("def f():\n    from ... import processing", {"processing"}),
        ("from transformers_internvl import processing", {"processing"}),
        ("from transformers_internvl.cli import main", {"cli"}),
        ("import transformers_internvl.training.data", {"training"}),
        ("from . import conversation\nfrom .chat import x\nfrom transformers import AutoModel\nimport torch", set()),
    ],
)
def test_the_import_scanner_catches_every_form_of_package_import(source, expected):
    # A modeling module is one package below the root; `from .. import processing` must not slip through.
    assert _imported_package_modules_of_source(source, depth=1) == expected


@pytest.mark.parametrize("path", sorted((PACKAGE / "modeling").glob("*.py")), ids=lambda path: path.name)
def test_modeling_imports_neither_processing_nor_conversion(path):
    assert not _imported_package_modules(path) & {"processing", "conversion", "training", "cli"}


@pytest.mark.parametrize("path", sorted((PACKAGE / "processing").glob("*.py")), ids=lambda path: path.name)
def test_processing_imports_neither_modeling_nor_conversion(path):
    assert not _imported_package_modules(path) & {"modeling", "conversion", "training", "cli"}


@pytest.mark.parametrize("path", sorted((PACKAGE / "conversion").glob("*.py")), ids=lambda path: path.name)
def test_conversion_imports_neither_cli_nor_training(path):
    assert not _imported_package_modules(path) & {"training", "cli"}


def test_chat_templates_is_a_leaf():
    assert _imported_package_modules(PACKAGE / "chat_templates.py") == set()


def test_the_leaf_module_imports_nothing_of_the_package():
    assert _imported_package_modules(PACKAGE / "chat_templates.py") == set()
    tree = ast.parse((PACKAGE / "chat_templates.py").read_text(encoding="utf-8"))
    assert not any(isinstance(node, ast.ImportFrom) and node.level > 0 for node in ast.walk(tree))


def test_loading_the_model_code_loads_no_processing_or_conversion_module():
    # `import transformers_internvl` registers the tokenizer and processor classes (processing/) with transformers;
    # the model code adds nothing of processing/ or conversion/ to that.
    code = (
        "import sys, transformers_internvl; before = set(sys.modules); "
        "import transformers_internvl.modeling.modeling_internvl; "
        "print(sorted(m for m in set(sys.modules) - before if m.startswith(('transformers_internvl.processing', "
        "'transformers_internvl.conversion'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_package_modules_stay_under_500_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 500


# new name -> old names kept as aliases
NAMES = {
    "InternVLChatConfig": ["InternVLConfig"],
    "InternVisionConfig": ["InternVLVisionConfig"],
    "InternVisionModel": ["InternVLVisionModel"],
    "InternVLChatPreTrainedModel": ["InternVLPreTrainedModel"],
    "InternVLChatBaseModel": ["InternVLModel"],
    "InternVLChatForConditionalGeneration": ["InternVLForConditionalGeneration", "InternVLChatModel"],
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_new_class_names_and_their_aliases_are_the_same_classes(name):
    cls = getattr(transformers_internvl, name)
    assert cls.__name__ == name
    for alias in NAMES[name]:
        assert getattr(transformers_internvl, alias) is cls


@pytest.mark.parametrize("name", sorted(NAMES))
def test_no_class_name_equals_one_of_transformers_own(name):
    # transformers has `InternVLConfig`, `InternVLModel`, ... for its own, different port; ours are named apart.
    assert not hasattr(transformers, name)


def test_auto_classes_give_the_chat_model_and_the_original_class_name_is_the_chat_model():
    config = AutoConfig.for_model("internvl_chat")
    assert type(config) is transformers_internvl.InternVLChatConfig
    assert type(AutoConfig.for_model("intern_vit_6b")) is transformers_internvl.InternVisionConfig
    for factory in (AutoModel, AutoModelForImageTextToText, AutoModelForCausalLM):
        assert factory._model_mapping[type(config)] is transformers_internvl.InternVLChatForConditionalGeneration
    # The original's `InternVLChatModel` (`architectures` of its config.json) is the full model with chat().
    assert hasattr(transformers_internvl.InternVLChatModel, "chat")
    assert not hasattr(transformers_internvl.InternVLChatBaseModel, "chat")


def test_original_class_name_loads_an_original_checkpoint(tmp_path):
    directory = QWEN2_DIR
    assert json.loads((directory / "config.json").read_text())["architectures"] == ["InternVLChatModel"]
    model = transformers_internvl.InternVLChatModel.from_pretrained(directory)
    assert type(model).__name__ == "InternVLChatForConditionalGeneration"


def _write_tokenizer_files(directory: Path, where: str, token: str, token_id: int) -> None:
    if where == "added_tokens.json":
        (directory / where).write_text(json.dumps({token: token_id}))
    elif where == "tokenizer_config.json":
        (directory / where).write_text(json.dumps({"added_tokens_decoder": {str(token_id): {"content": token}}}))
    else:
        (directory / where).write_text(json.dumps({"added_tokens": [{"id": token_id, "content": token}]}))


@pytest.mark.parametrize("where", ["added_tokens.json", "tokenizer_config.json", "tokenizer.json"])
def test_added_token_ids_come_from_any_of_the_three_tokenizer_files(tmp_path, where):
    _write_tokenizer_files(tmp_path, where, IMAGE_CONTEXT_TOKEN, 151667)
    assert find_added_token_id(tmp_path, IMAGE_CONTEXT_TOKEN) == 151667
    assert find_added_token_id(tmp_path, "<|im_end|>") is None


def test_tokenizer_file_ids_fill_only_what_is_unset(tmp_path):
    (tmp_path / "added_tokens.json").write_text(json.dumps({IMAGE_CONTEXT_TOKEN: 7, "<|im_end|>": 5}))

    class Model:
        config = transformers_internvl.InternVLChatConfig(template="internvl2_5", image_token_id=3)
        generation_config = GenerationConfig(eos_token_id=2)

    model = Model()
    apply_tokenizer_file_ids(model, tmp_path)
    assert model.config.image_token_id == 3  # an explicit id is kept
    assert model.generation_config.eos_token_id == [2, 5]  # the template's end token is added
    model.config.image_token_id = None
    apply_tokenizer_file_ids(model, tmp_path)
    assert model.config.image_token_id == 7
    assert model.generation_config.eos_token_id == [2, 5]  # not added twice


def test_stop_token_is_kept_as_an_int_when_it_is_the_only_one():
    generation_config = GenerationConfig()
    add_template_stop_token(generation_config, 9)
    assert generation_config.eos_token_id == 9
    add_template_stop_token(generation_config, None)
    assert generation_config.eos_token_id == 9


@pytest.fixture
def custom_template():
    template = Conversation(
        name="test-custom",
        system_template="[SYS]{system_message}",
        system_message="be brief",
        roles=("[U]", "[A]"),
        sep="[END]\n",
    )
    register_conv_template(template)
    yield template
    CONV_TEMPLATES.pop("test-custom")


def test_chat_prompts_of_a_registered_template_equal_the_conversation_renderer(custom_template):
    history = [("<image>\nfirst", "answer"), ("", "")]
    expected = get_conv_template("test-custom")
    for question, answer in history:
        expected.append_message(expected.roles[0], question)
        expected.append_message(expected.roles[1], answer)
    expected.append_message(expected.roles[0], "second")
    expected.append_message(expected.roles[1], None)
    prompt = build_chat_prompt("test-custom", "second", history=history, num_tiles_list=[2], num_image_token=1)
    assert prompt == expected.get_prompt().replace("<image>", "<img>" + IMAGE_CONTEXT_TOKEN * 2 + "</img>", 1)
    assert prompt.startswith("[SYS]be brief[END]\n[U]<img>")


def test_a_conversation_with_messages_renders_them_before_the_question():
    conversation = get_conv_template("internvl2_5")
    conversation.system_message = "sys"
    conversation.append_message(conversation.roles[0], "q1")
    conversation.append_message(conversation.roles[1], "a1")
    prompt = build_chat_prompt(conversation, "q2")
    conversation.append_message(conversation.roles[0], "q2")
    conversation.append_message(conversation.roles[1], None)
    assert prompt == conversation.get_prompt()


def test_batch_chat_prompts_replace_only_the_first_placeholder_of_each_question():
    prompts = build_batch_chat_prompts(
        "internvl2_5", ["<image> and <image>", "plain"], num_tiles_list=[1, 2], num_image_token=1
    )
    image = "<img>" + IMAGE_CONTEXT_TOKEN + "</img>"
    assert "<|im_start|>user\n" + image + " and <image><|im_end|>" in prompts[0]
    assert "<|im_start|>user\n<img>" + IMAGE_CONTEXT_TOKEN * 2 + "</img>\nplain<|im_end|>" in prompts[1]


def test_image_processor_docstring_lists_every_tile_count_alias():
    from transformers_internvl.processing.image_processing_options import MAX_TILES_ALIASES, MIN_TILES_ALIASES

    docstring = " ".join(transformers_internvl.InternVLChatImageProcessor.__doc__.split())
    for alias in (*MAX_TILES_ALIASES, *MIN_TILES_ALIASES):
        assert f"`{alias}`" in docstring, alias
