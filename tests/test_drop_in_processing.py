"""Processing side of drop-in loading of original OpenGVLab folders (issue 8).

* a Phi-3 folder (sentencepiece `tokenizer.model` + tokenizer_config.json naming `LlamaTokenizer`, as
  Mini-InternVL-Chat-4B-V1-5 / InternVL2-4B ship) gives the Llama sentencepiece tokenizer, or an error, never
  another class or an empty vocabulary;
* the tiling options under their original names act on every path: config.json, `from_pretrained(dir, k=v)`, the
  processor call, `images_kwargs`, `apply_chat_template`, `AutoImageProcessor`; unknown options raise;
* `AutoImageProcessor` / `AutoVideoProcessor` on an original folder give this package's processors.

Expected tile counts come from the original `dynamic_preprocess` rule worked by hand for a 1600 x 900 image
(aspect 1.778): the grid with the closest aspect among those with min..max tiles, ties going to the larger grid when
the image area exceeds half the grid's pixel area; a thumbnail is added to grids of more than one tile.
"""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from helpers import FIXTURES, ORIGINAL_PREPROCESSOR_CONFIG, QWEN2_TOKENIZER, copy_tokenizer
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, LlamaTokenizer
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLImageProcessor, InternVLProcessor
from transformers_internvl.modeling.chat_prompts import build_chat_prompt
from transformers_internvl.modeling.conversation import get_conv_template
from transformers_internvl.processing.tokenizer_loading import check_tokenizer
from transformers_internvl.processing.video_processing_internvl import InternVLVideoProcessor

MODEL_CONFIG = FIXTURES / "models" / "tiny-qwen2" / "config.json"
IMG_CONTEXT_ID = json.loads((QWEN2_TOKENIZER / "added_tokens.json").read_text())["<IMG_CONTEXT>"]
IMAGE_SIZE = (1600, 900)
# Tiles of a 1600 x 900 image (thumbnail included) for each option set (see the module docstring).
TILE_CASES = [
    ({}, 9),  # max 12: grids (2,1) and (4,2) tie at aspect 2; the image is large enough for (4,2): 8 + thumbnail
    ({"max_num": 2}, 3),  # (2,1) + thumbnail
    ({"max_dynamic_patch": 4, "use_thumbnail": False}, 2),  # (2,1), no thumbnail
    ({"min_dynamic_patch": 5, "max_dynamic_patch": 6}, 7),  # grids of 5-6 tiles: (3,2) + thumbnail
    ({"dynamic_image_size": False}, 1),  # one tile, a plain resize
]
# config.json spells the maximum `max_dynamic_patch` (the original config field); `max_num` is the load_image name.
CONFIG_NAMES = {"max_num": "max_dynamic_patch"}


def _original_dir(root: Path, name: str = "original", **config_changes) -> Path:
    """An original-layout folder: config.json, the Qwen2 tokenizer files, the original CLIP preprocessor config."""
    directory = root / name
    directory.mkdir()
    copy_tokenizer("qwen2-tiny", directory)
    config = json.loads(MODEL_CONFIG.read_text())
    config.update(config_changes)
    (directory / "config.json").write_text(json.dumps(config))
    preprocessor_config = {**ORIGINAL_PREPROCESSOR_CONFIG, "image_processor_type": "CLIPImageProcessor"}
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor_config))
    return directory


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8))


def _plain_resize_tile(image: Image.Image) -> np.ndarray:
    """The original's non-dynamic branch: `build_transform` alone (bicubic resize to 448, ToTensor, Normalize)."""
    pixels = np.asarray(image.convert("RGB").resize((448, 448), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)


def _messages(image):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Describe."}]}]


# ---- tiling options on every path ---------------------------------------------------------------------------------


def _tiles_via(path: str, root: Path, options: dict, image: Image.Image):
    """(num_tiles, pixel_values, input_ids) with `options` given through `path`."""
    if path == "config.json":
        directory = _original_dir(root, **{CONFIG_NAMES.get(key, key): value for key, value in options.items()})
        out = AutoProcessor.from_pretrained(directory)(images=image, text="<image>\nDescribe.", return_tensors="pt")
    elif path == "from_pretrained":
        processor = AutoProcessor.from_pretrained(_original_dir(root), **options)
        out = processor(images=image, text="<image>\nDescribe.", return_tensors="pt")
    elif path == "call":
        processor = AutoProcessor.from_pretrained(_original_dir(root))
        out = processor(images=image, text="<image>\nDescribe.", return_tensors="pt", **options)
    elif path == "images_kwargs":
        processor = AutoProcessor.from_pretrained(_original_dir(root))
        out = processor(images=image, text="<image>\nDescribe.", return_tensors="pt", images_kwargs=dict(options))
    elif path == "apply_chat_template":
        processor = AutoProcessor.from_pretrained(_original_dir(root))
        out = processor.apply_chat_template(
            _messages(image),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            **options,
        )
    elif path == "AutoImageProcessor":
        image_processor = AutoImageProcessor.from_pretrained(_original_dir(root), **options)
        out = image_processor(image, return_tensors="pt")
        return int(out["num_tiles"].sum()), out["pixel_values"], None
    else:
        raise AssertionError(path)
    return int(out["num_tiles"].sum()), out["pixel_values"], out["input_ids"]


PATHS = ["config.json", "from_pretrained", "call", "images_kwargs", "apply_chat_template", "AutoImageProcessor"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("options,expected_tiles", TILE_CASES, ids=lambda value: str(value))
def test_tiling_options_are_honoured_on_every_path(tmp_path, path, options, expected_tiles):
    num_tiles, pixel_values, input_ids = _tiles_via(path, tmp_path, options, _image())
    assert num_tiles == expected_tiles
    assert tuple(pixel_values.shape) == (expected_tiles, 3, 448, 448)
    if input_ids is not None:
        assert int((input_ids == IMG_CONTEXT_ID).sum()) == 256 * expected_tiles


@pytest.mark.parametrize("path", PATHS)
def test_dynamic_image_size_false_is_a_plain_resize_to_one_tile(tmp_path, path):
    image = _image()
    _, pixel_values, _ = _tiles_via(path, tmp_path, {"dynamic_image_size": False}, image)
    np.testing.assert_allclose(pixel_values[0].numpy(), _plain_resize_tile(image), rtol=0, atol=1e-5)


def test_processor_image_token_id_is_the_fixture_context_token(tmp_path):
    processor = AutoProcessor.from_pretrained(_original_dir(tmp_path))
    assert processor.image_token_id == IMG_CONTEXT_ID


def test_dynamic_image_size_can_be_turned_back_on_per_call(tmp_path):
    processor = AutoProcessor.from_pretrained(_original_dir(tmp_path, dynamic_image_size=False, max_dynamic_patch=2))
    out = processor(images=_image(), text="<image>\nx", dynamic_image_size=True)
    assert list(out["num_tiles"]) == [3]  # the config's max_dynamic_patch=2 applies again: (2,1) + thumbnail


def test_options_survive_save_and_reload(tmp_path):
    processor = AutoProcessor.from_pretrained(_original_dir(tmp_path), dynamic_image_size=False, max_num=3)
    processor.save_pretrained(tmp_path / "saved")
    tokenizer_config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert not {"dynamic_image_size", "max_num", "max_dynamic_patch"} & set(tokenizer_config)
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert reloaded.image_processor.dynamic_image_size is False and reloaded.image_processor.max_dynamic_patch == 3
    assert list(reloaded(images=_image(), text="<image>\nx")["num_tiles"]) == [1]


# ---- unknown options ------------------------------------------------------------------------------------------------


def test_tiling_options_never_reach_the_tokenizer(tmp_path):
    processor = AutoProcessor.from_pretrained(
        _original_dir(tmp_path), max_num=1, dynamic_image_size=True, use_thumbnail=False, min_num=1
    )
    assert not {"max_num", "dynamic_image_size", "use_thumbnail", "min_num"} & set(processor.tokenizer.init_kwargs)
    assert processor.image_processor.max_dynamic_patch == 1 and processor.image_processor.use_thumbnail is False


def test_unknown_from_pretrained_option_raises_naming_it(tmp_path):
    with pytest.raises(TypeError, match="max_tile_count"):
        AutoProcessor.from_pretrained(_original_dir(tmp_path), max_tile_count=4)


@pytest.mark.parametrize("alias", ["max_num", "max_patches", "max_tiles"])
def test_every_documented_alias_of_max_dynamic_patch_sets_it(tmp_path, alias):
    processor = AutoProcessor.from_pretrained(_original_dir(tmp_path), **{alias: 4})
    assert processor.image_processor.max_dynamic_patch == 4
    assert alias not in processor.tokenizer.init_kwargs


def test_two_names_of_one_option_must_agree(tmp_path):
    directory = _original_dir(tmp_path)
    with pytest.raises(ValueError, match="max_num=2.*max_dynamic_patch=3|max_dynamic_patch=3.*max_num=2"):
        AutoProcessor.from_pretrained(directory, max_num=2, max_dynamic_patch=3)
    assert (
        AutoProcessor.from_pretrained(directory, max_num=2, max_dynamic_patch=2).image_processor.max_dynamic_patch == 2
    )


def test_tokenizer_options_still_reach_the_tokenizer(tmp_path):
    processor = AutoProcessor.from_pretrained(_original_dir(tmp_path), model_max_length=77, padding_side="right")
    assert processor.tokenizer.model_max_length == 77 and processor.tokenizer.padding_side == "right"


def test_pipeline_model_arguments_are_not_processor_options(tmp_path):
    # `pipeline(...)` forwards the model's arguments to every loader; they are ignored there, not stored.
    processor = AutoProcessor.from_pretrained(
        _original_dir(tmp_path), _from_pipeline="image-text-to-text", dtype="float32", device_map="cpu"
    )
    assert not {"dtype", "device_map"} & set(processor.tokenizer.init_kwargs)


def test_unknown_images_kwargs_option_raises(tmp_path):
    processor = AutoProcessor.from_pretrained(_original_dir(tmp_path))
    with pytest.raises(TypeError, match="max_tile_count"):
        processor(images=_image(), text="<image>\nx", images_kwargs={"max_tile_count": 2})
    # `max_tiles` is a documented alias of `max_dynamic_patch`: 2 grid tiles + thumbnail for a wide image.
    outputs = processor(images=_image(), text="<image>\nx", images_kwargs={"max_tiles": 2})
    reference = processor(images=_image(), text="<image>\nx", images_kwargs={"max_dynamic_patch": 2})
    assert outputs["num_tiles"] == reference["num_tiles"]
    assert torch.equal(torch.as_tensor(outputs["pixel_values"]), torch.as_tensor(reference["pixel_values"]))


def test_unknown_auto_image_processor_option_raises(tmp_path):
    directory = _original_dir(tmp_path)
    with pytest.raises(TypeError, match="max_tile_count"):
        AutoImageProcessor.from_pretrained(directory, max_tile_count=2)
    assert AutoImageProcessor.from_pretrained(directory, max_tiles=2).max_dynamic_patch == 2


# ---- AutoImageProcessor / AutoVideoProcessor on original folders ------------------------------------------------


def test_auto_image_processor_on_original_folder_tiles_with_config_defaults(tmp_path):
    directory = _original_dir(tmp_path, max_dynamic_patch=6, use_thumbnail=False)
    image_processor = AutoImageProcessor.from_pretrained(directory)
    assert type(image_processor) is InternVLImageProcessor
    assert image_processor.max_dynamic_patch == 6 and image_processor.use_thumbnail is False
    processor = AutoProcessor.from_pretrained(directory)
    expected = processor(images=_image(), text="<image>\nx", return_tensors="pt")["pixel_values"]
    got = image_processor(_image(), return_tensors="pt")["pixel_values"]
    assert got.shape[0] == 2  # among grids of at most 6 tiles (2,1) is closest to 1.778; no thumbnail
    assert np.array_equal(got.numpy(), expected.numpy())


def test_auto_image_processor_without_preprocessor_config(tmp_path):
    directory = _original_dir(tmp_path)
    (directory / "preprocessor_config.json").unlink()
    assert type(AutoImageProcessor.from_pretrained(directory)) is InternVLImageProcessor


def test_auto_video_processor_on_original_folder(tmp_path):
    directory = _original_dir(tmp_path, force_image_size=224)
    video_processor = AutoVideoProcessor.from_pretrained(directory, num_segments=4)
    assert type(video_processor) is InternVLVideoProcessor
    assert video_processor.image_size == 224 and video_processor.num_segments == 4


def test_auto_image_processor_on_saved_processor_folder_keeps_saved_settings(tmp_path):
    directory = _original_dir(tmp_path)
    AutoProcessor.from_pretrained(directory, max_num=5).save_pretrained(directory)
    image_processor = AutoImageProcessor.from_pretrained(directory)
    assert type(image_processor) is InternVLImageProcessor and image_processor.max_dynamic_patch == 5


def test_other_folders_are_left_to_transformers(tmp_path):
    directory = tmp_path / "clip"
    directory.mkdir()
    (directory / "preprocessor_config.json").write_text(
        json.dumps({**ORIGINAL_PREPROCESSOR_CONFIG, "image_processor_type": "CLIPImageProcessor"})
    )
    image_processor = AutoImageProcessor.from_pretrained(directory)
    assert type(image_processor).__name__.startswith("CLIPImageProcessor")


# ---- Phi-3 folders: the Llama sentencepiece tokenizer ---------------------------------------------------------------

PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
INTERNVL_ADDED = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A red panda sits on a branch and eats bamboo.",
    "Describe the image in detail, please. What is shown in this picture?",
    "Numbers 0123456789 and symbols: ()[]{}<>.,;:!?",
    "你好，世界！这是一个测试。",
]
PLAIN_TEXTS = ["The quick brown fox", "A panda eats bamboo.", "Describe the picture, please!", "0123 fox"]


@pytest.fixture(scope="module")
def phi3_folder(tmp_path_factory):
    """A Phi-3 InternVL folder: a tiny sentencepiece BPE model (byte fallback, <unk>/<s>/</s> at 0/1/2 as Llama),
    Phi-3's chat tokens and InternVL's image tokens added after it, tokenizer_config.json naming LlamaTokenizer."""
    directory = tmp_path_factory.mktemp("phi3") / "InternVL2-4B-tiny"
    directory.mkdir()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    sentencepiece = spm.SentencePieceProcessor(model_proto=model.getvalue())
    added = {token: sentencepiece.get_piece_size() + index for index, token in enumerate(PHI3_ADDED + INTERNVL_ADDED)}
    decoder = {
        str(token_id): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token, token_id in [("<unk>", 0), ("<s>", 1), ("</s>", 2), *added.items()]
    }
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 8192,
        "pad_token": "</s>",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (directory / "added_tokens.json").write_text(json.dumps(added))
    special_tokens = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special_tokens))
    config = json.loads(MODEL_CONFIG.read_text())
    config["template"] = "phi3-chat"
    (directory / "config.json").write_text(json.dumps(config))
    return directory, sentencepiece, added


def test_autoprocessor_on_phi3_folder_builds_the_llama_sentencepiece_tokenizer(phi3_folder):
    directory, sentencepiece, added = phi3_folder
    processor = AutoProcessor.from_pretrained(directory)
    tokenizer = processor.tokenizer
    assert isinstance(tokenizer, LlamaTokenizer)
    for text in PLAIN_TEXTS:
        assert tokenizer(text)["input_ids"] == [1, *sentencepiece.encode(text)]
    for token, token_id in added.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        # the original's slow class (legacy: false) puts its "▁" before a text that does not start with one of
        # `all_special_tokens` (here only <s>, </s>, <unk>): a lone "▁" token first (`llama_slow_tokenizer`)
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [
            sentencepiece.piece_to_id("\u2581"),
            token_id,
        ]
    assert processor.chat_eos_token == "<|end|>" and processor.chat_eos_token_id == added["<|end|>"]
    assert processor.image_token_id == added["<IMG_CONTEXT>"]


def test_phi3_folder_chat_template_is_phi3_chat(phi3_folder):
    directory, _, added = phi3_folder
    processor = AutoProcessor.from_pretrained(directory)
    messages = [{"role": "user", "content": "Hello, who are you?"}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == build_chat_prompt("phi3-chat", "Hello, who are you?")
    assert rendered.endswith("<|end|><|user|>\nHello, who are you?<|end|><|assistant|>\n")
    ids = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ids["input_ids"][0].count(added["<|end|>"]) == 2


def test_phi3_folder_without_its_sentencepiece_model_raises(phi3_folder, tmp_path):
    directory, _, _ = phi3_folder
    broken = tmp_path / "no-model"
    shutil.copytree(directory, broken)
    (broken / "tokenizer.model").unlink()
    # AutoTokenizer alone builds a LlamaTokenizer with an empty vocabulary here; the processor refuses it.
    assert AutoTokenizer.from_pretrained(broken)("The quick")["input_ids"] == [1]
    with pytest.raises(OSError, match="tokenizer.model"):
        AutoProcessor.from_pretrained(broken)


def test_tokenizer_of_another_class_than_declared_raises(phi3_folder):
    directory, _, _ = phi3_folder
    other = AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)
    with pytest.raises(ValueError, match="LlamaTokenizer.*Qwen2Tokenizer"):
        check_tokenizer(directory, other, {})


@pytest.mark.parametrize(
    "template,stop",
    [
        ("phi3-chat", "<|end|>"),
        ("internvl2_5", "<|im_end|>"),
        ("Hermes-2", "<|im_end|>"),
        ("internlm2-chat", "<|im_end|>"),
        ("internvl_zh", "</s>"),
        ("internvl3_5_gpt_oss", "<|return|>"),
    ],
)
def test_processor_knows_the_stop_token_of_every_template(tmp_path, template, stop):
    processor = AutoProcessor.from_pretrained(_original_dir(tmp_path, template=template))
    assert processor.chat_eos_token == stop == get_conv_template(template).eos_token
    rendered = processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert rendered == build_chat_prompt(template, "Hi")


def test_internvl_processor_class_is_exported():
    assert InternVLProcessor.__name__ == "InternVLChatProcessor"
