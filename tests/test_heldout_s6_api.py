"""Held-out re-check of the original chat API and config families (issues 5 and 8) on cases the fixtures do not hold.

Expected values come from a small reference written here from reading the original OpenGVLab code (commit 2410d1d):
`internvl_chat/internvl/conversation.py` (`Conversation.get_prompt`, the `internvl_zh`, `Hermes-2`, `internlm2-chat`,
`phi3-chat` and `internvl2_5` templates) and `internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py`
(`chat`, `batch_chat`, `pixel_shuffle`, `extract_feature`, `num_image_token`), plus
`internvl_chat/internvl/model/internvl_chat/modeling_intern_vit.py` (`InternVisionEmbeddings._get_pos_embed`). The
reference is this file's own code (a transcription of the behaviour, not a copy), so the package's prompt renderer
(Jinja), its pixel unshuffle and its embeddings are compared with an independent statement of the same rules.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from helpers import FIXTURES, QWEN2_IMAGE_TOKEN_ID, original_model_dir

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLConfig, InternVLForConditionalGeneration
from transformers_internvl.modeling.chat_prompts import build_batch_chat_prompts, build_chat_prompt, get_eos_token
from transformers_internvl.modeling.conversation import get_conv_template

# ---- reference, transcribed from internvl_chat/internvl/conversation.py and modeling_internvl_chat.py (2410d1d) ----

SYSTEM_V2 = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
SYSTEM_V2_5 = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
IM_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")
IM_SYSTEM = "<|im_start|>system\n{system_message}"
# name -> (system_template, system_message, roles, separator style, sep, sep2)
ORIGINAL_TEMPLATES = {
    "internvl_zh": ("", "", ("<human>", "<bot>"), "INTERNVL_ZH", "</s>", " "),
    "Hermes-2": (IM_SYSTEM, SYSTEM_V2, IM_ROLES, "MPT", "<|im_end|>", None),
    "internlm2-chat": (IM_SYSTEM, SYSTEM_V2, IM_ROLES, "MPT", "<|im_end|>", None),
    "phi3-chat": ("<|system|>\n{system_message}", SYSTEM_V2, ("<|user|>\n", "<|assistant|>\n"), "MPT", "<|end|>", None),
    "internvl2_5": (IM_SYSTEM, SYSTEM_V2_5, IM_ROLES, "MPT", "<|im_end|>\n", None),
}


def reference_get_prompt(name: str, system_message: str, messages: list[tuple[str, str | None]]) -> str:
    """`Conversation.get_prompt()` for the MPT and INTERNVL_ZH styles; a falsy message leaves the turn open."""
    system_template, _, _, style, sep, sep2 = ORIGINAL_TEMPLATES[name]
    if style == "MPT":
        text = system_template.format(system_message=system_message) + sep
        for role, message in messages:
            text += role + message + sep if message else role
        return text
    separators = (sep2, sep)  # INTERNVL_ZH: the system message, then sep2 / sep alternating
    text = system_message + separators[0]
    for index, (role, message) in enumerate(messages):
        text += role + ": " + message + separators[index % 2] if message else role + ":"
    return text


def reference_chat_prompt(
    name, question, history, pixel_values_passed, num_patches_list, system_message=None, num_image_token=256
):
    """The query `chat()` tokenizes and the question it stores in the history."""
    roles = ORIGINAL_TEMPLATES[name][2]
    if history is None and pixel_values_passed and "<image>" not in question:
        question = "<image>\n" + question
    messages = []
    for old_question, old_answer in history or []:
        messages += [(roles[0], old_question), (roles[1], old_answer)]
    messages += [(roles[0], question), (roles[1], None)]
    default = ORIGINAL_TEMPLATES[name][1]
    query = reference_get_prompt(name, default if system_message is None else system_message, messages)
    for num_patches in num_patches_list:
        query = query.replace("<image>", "<img>" + "<IMG_CONTEXT>" * num_image_token * num_patches + "</img>", 1)
    return query, question


def reference_batch_prompts(name, questions, num_patches_list, pixel_values_passed, system_message=None, tokens=256):
    """The queries `batch_chat()` tokenizes (left padded): one image per question, first placeholder only."""
    queries = []
    for question, num_patches in zip(questions, num_patches_list):
        queries.append(reference_chat_prompt(name, question, None, pixel_values_passed, [], system_message)[0])
        queries[-1] = queries[-1].replace("<image>", "<img>" + "<IMG_CONTEXT>" * tokens * num_patches + "</img>", 1)
    return queries


def reference_pixel_shuffle(x: torch.Tensor, scale: float, ps_version: str) -> torch.Tensor:
    """`InternVLChatModel.pixel_shuffle` (N, W, H, C) -> (N, W*s, H*s, C/s^2); v1 leaves the grid transposed."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x if ps_version == "v1" else x.permute(0, 2, 1, 3).contiguous()


# ---- prompt strings -------------------------------------------------------------------------------------------------

PIECES = ["Hello", "<image>", "<image>\n", "描述一下", " ", "\n", "", "Frame1: <image>\n", "<|im_end|>", "a:b", "{}"]
ODD = ['"', "\\", "\\n", "\t", "\x01", "\u2028", "'", "{{ messages }}", "{% if true %}x{% endif %}", "{#", "\r\n", "😀"]


def _text(rng: random.Random, at_most: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, at_most)))


@pytest.mark.parametrize("name", sorted(ORIGINAL_TEMPLATES))
def test_template_fields_and_eos_string_are_the_originals(name):
    system_template, system_message, roles, _, sep, sep2 = ORIGINAL_TEMPLATES[name]
    conversation = get_conv_template(name)
    assert (conversation.system_template, conversation.system_message, tuple(conversation.roles)) == (
        system_template,
        system_message,
        roles,
    )
    assert (conversation.sep, conversation.sep2) == (sep, sep2)
    assert get_eos_token(name) == conversation.eos_token == sep.strip()  # chat(): `template.sep.strip()`


@pytest.mark.parametrize("name", sorted(ORIGINAL_TEMPLATES))
def test_random_chat_and_batch_chat_prompts_equal_the_original(name):
    """Random histories (None / [] / several turns, empty answers), placeholders in any turn or in the system
    message, too many or too few tile counts, system overrides and tokens per tile 256 / 64 / 16 / 1."""
    rng = random.Random(f"s6-{name}")
    for _ in range(60):
        question = _text(rng, 4)
        history = None if rng.random() < 0.4 else [(_text(rng, 3), _text(rng, 2)) for _ in range(rng.randint(0, 3))]
        pixel_values_passed = rng.random() < 0.7
        system_message = rng.choice([None, "", "You are a bot.", "系统<image>"])
        tokens = rng.choice([256, 64, 16, 1])
        counts = [rng.randint(1, 5) for _ in range(rng.randint(1, 4))] if pixel_values_passed else rng.choice([[], [2]])
        expected, _ = reference_chat_prompt(
            name, question, history, pixel_values_passed, counts, system_message, tokens
        )
        assert (
            build_chat_prompt(
                name,
                question,
                history=history,
                system_message=system_message,
                num_patches_list=counts,
                pixel_values_passed=pixel_values_passed,
                num_image_token=tokens,
            )
            == expected
        )
        questions = [_text(rng, 3) for _ in range(rng.randint(1, 4))]
        counts = [rng.randint(int(pixel_values_passed), 4) for _ in questions]
        assert build_batch_chat_prompts(
            name,
            questions,
            num_patches_list=counts,
            system_message=system_message,
            pixel_values_passed=pixel_values_passed,
            num_image_token=tokens,
        ) == reference_batch_prompts(name, questions, counts, pixel_values_passed, system_message, tokens)


@pytest.mark.parametrize("name", sorted(ORIGINAL_TEMPLATES))
def test_prompts_with_quotes_escapes_and_jinja_syntax_in_text(name):
    """Text is data: quotes, backslashes, control characters and Jinja syntax in the system message, the history and
    the question come out verbatim."""
    for odd in ODD:
        history = [(odd, odd)]
        expected, _ = reference_chat_prompt(name, "Q" + odd, history, True, [1], "A" + odd + "B", 4)
        ours = build_chat_prompt(
            name,
            "Q" + odd,
            history=history,
            system_message="A" + odd + "B",
            num_patches_list=[1],
            pixel_values_passed=True,
            num_image_token=4,
        )
        assert ours == expected, odd


# ---- model.chat / batch_chat on the tiny Qwen2 model ----------------------------------------------------------------

GREEDY = {"max_new_tokens": 3, "do_sample": False}


@pytest.fixture
def recorded(qwen2_model, monkeypatch):
    """`qwen2_model` whose `generate` records its keyword arguments (chat-cache reuse off: full prompts)."""
    calls = []
    original = qwen2_model.generate

    def generate(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(qwen2_model, "generate", generate)
    monkeypatch.setattr(qwen2_model, "reuse_chat_cache", False)
    return qwen2_model, calls


def _pixels(num_tiles: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_tiles, 3, 448, 448, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("question", "history", "counts"),
    [
        # an image in an earlier turn and one in the new question (two images, 2 + 1 tiles)
        ("Compare with <image> please.", [("<image>\nWhat is it?", "A cat."), ("And then?", "Nothing.")], [2, 1]),
        # video style, older `Frame{i}` labels, 5 frames of one tile, no history
        ("".join(f"Frame{i}: <image>\n" for i in range(1, 6)) + "What happens?", None, [1] * 5),
        # no placeholder, history None: `<image>\n` is prepended and stored in the history
        ("Describe it.", None, [3]),
        # a history answer that is empty renders the open role (original quirk)
        ("Try again.", [("<image>\nWhat?", "")], [2]),
    ],
)
def test_chat_sends_the_original_prompt_ids_eos_and_history(recorded, qwen2_tokenizer, question, history, counts):
    model, calls = recorded
    pixel_values = _pixels(sum(counts))
    caller_config = dict(GREEDY, eos_token_id=5)  # the original overwrites a caller's eos with the template's
    given = history
    history = None if history is None else list(history)  # chat() appends to a given list, as the original
    response, new_history = model.chat(
        qwen2_tokenizer,
        pixel_values,
        question,
        caller_config,
        history=history,
        return_history=True,
        num_patches_list=counts,
    )
    expected, stored_question = reference_chat_prompt("internvl2_5", question, given, True, counts)
    assert torch.equal(calls[-1]["input_ids"].cpu(), qwen2_tokenizer(expected, return_tensors="pt").input_ids)
    assert int((calls[-1]["input_ids"] == QWEN2_IMAGE_TOKEN_ID).sum()) == 256 * sum(counts)
    assert calls[-1]["eos_token_id"] == qwen2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert new_history == [*(given or []), (stored_question, response)]
    if given is not None:  # the original's `history.append`: the caller's list is the returned one, extended
        assert new_history is history
    assert caller_config == dict(GREEDY, eos_token_id=5)  # not mutated (a documented difference)


def test_config_system_message_empty_string_renders_an_empty_system_block(recorded, qwen2_tokenizer, monkeypatch):
    """The original model takes `config.system_message` whenever the config has one (`hasattr`), an empty string
    included, which renders an empty system block; the processor does the same (`loading_options`)."""
    model, calls = recorded
    monkeypatch.setattr(model.config, "system_message", "", raising=False)
    model.chat(qwen2_tokenizer, None, "Hello", dict(GREEDY))
    expected, _ = reference_chat_prompt("internvl2_5", "Hello", None, False, [], system_message="")
    assert qwen2_tokenizer.decode(calls[-1]["input_ids"][0]) == expected
    monkeypatch.setattr(model.config, "system_message", "Be brief.")
    model.batch_chat(qwen2_tokenizer, None, ["Hi", "Yo"], dict(GREEDY), num_patches_list=[0, 0])
    expected = reference_batch_prompts("internvl2_5", ["Hi", "Yo"], [0, 0], False, "Be brief.")
    sent = [
        qwen2_tokenizer.decode(ids[mask.bool()])
        for ids, mask in zip(calls[-1]["input_ids"], calls[-1]["attention_mask"])
    ]
    assert sent == expected


def test_generation_dict_with_an_unknown_key_raises_as_generate_does(qwen2_model, qwen2_tokenizer):
    # The original passes the dict to `language_model.generate(**generation_config)`, which rejects unused kwargs.
    with pytest.raises(ValueError, match="foo_bar"):
        qwen2_model.chat(qwen2_tokenizer, None, "Hello", dict(GREEDY, foo_bar=1))


def test_batch_chat_mixed_tiles_left_pads_and_answers_as_single_chats(recorded, qwen2_tokenizer):
    model, calls = recorded
    questions = ["<image>\nA?", "B", "Look: <image> C?"]
    counts = [1, 3, 2]
    pixel_values = _pixels(sum(counts), seed=1)
    answers = model.batch_chat(qwen2_tokenizer, pixel_values, questions, dict(GREEDY), num_patches_list=counts)
    expected = qwen2_tokenizer(
        reference_batch_prompts("internvl2_5", questions, counts, True),
        return_tensors="pt",
        padding=True,
        padding_side="left",
    )
    assert torch.equal(calls[-1]["input_ids"].cpu(), expected.input_ids)
    assert torch.equal(calls[-1]["attention_mask"].cpu(), expected.attention_mask)
    assert calls[-1]["eos_token_id"] == qwen2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    starts = [0, 1, 4, 6]
    singles = [
        model.chat(qwen2_tokenizer, pixel_values[starts[i] : starts[i + 1]], question, dict(GREEDY))
        for i, question in enumerate(questions)
    ]
    assert answers == singles


def test_beam_search_dict_gives_the_generate_answer(qwen2_model, qwen2_tokenizer):
    config = {"max_new_tokens": 4, "do_sample": False, "num_beams": 2}
    pixel_values = _pixels(1, seed=2)
    answer = qwen2_model.chat(qwen2_tokenizer, pixel_values, "Hi", dict(config))
    prompt, _ = reference_chat_prompt("internvl2_5", "Hi", None, True, [1])
    inputs = qwen2_tokenizer(prompt, return_tensors="pt")
    eos = qwen2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    output = qwen2_model.generate(**inputs, pixel_values=pixel_values, eos_token_id=eos, **config)
    text = qwen2_tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert answer == text.split("<|im_end|>")[0].strip()


# ---- config families: original-layout configs with non-default vision / connector fields ---------------------------

FAMILY_CASES = [
    # (llm family fixture, top-level overrides, vision_config overrides)
    (
        "llama_yi",
        {
            "template": "Hermes-2",
            "ps_version": "v1",
            "dynamic_image_size": False,
            "use_thumbnail": False,
            "force_image_size": 56,
        },
        {"qk_normalization": True, "norm_type": "rms_norm", "qkv_bias": False},
    ),
    ("phi3", {"ps_version": "v1", "select_layer": -2, "downsample_ratio": 0.25, "force_image_size": 112}, {}),
    ("llama3", {"ps_version": "v2", "select_layer": 1, "force_image_size": 56}, {"use_flash_attn": False}),
    ("internlm3_in_internlm2", {"template": "internlm2-chat", "ps_version": "v1", "force_image_size": 56}, {}),
]


@pytest.mark.parametrize(("family", "top", "vision"), FAMILY_CASES)
def test_family_config_round_trips_and_features_follow_the_original_formulas(family, top, vision, tmp_path):
    raw = json.loads((FIXTURES / "llm_families" / f"{family}.json").read_text())
    raw.update(top)
    raw["vision_config"].update(vision, image_size=raw["force_image_size"])
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(InternVLConfig(**{k: v for k, v in raw.items() if k != "model_type"}))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in (
        "template",
        "ps_version",
        "select_layer",
        "downsample_ratio",
        "force_image_size",
        "dynamic_image_size",
        "use_thumbnail",
    ):
        assert saved[key] == raw[key], key
    assert saved["vision_config"]["use_flash_attn"] == raw["vision_config"]["use_flash_attn"]
    model = InternVLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    size, ratio = raw["force_image_size"], raw["downsample_ratio"]
    tokens = int((size // 14) ** 2 * ratio**2)  # InternVLChatModel.__init__
    assert model.num_image_token == model.config.num_image_token == tokens > 1

    pixel_values = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        features = model.extract_feature(pixel_values)
        outputs = model.model.vision_model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        layer = raw["select_layer"]
        hidden = (outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer])[:, 1:, :]
        side = int(hidden.shape[1] ** 0.5)
        grid = hidden.reshape(hidden.shape[0], side, side, -1)
        expected = model.mlp1(reference_pixel_shuffle(grid, ratio, raw["ps_version"]).reshape(3, tokens, -1))
        other = model.mlp1(
            reference_pixel_shuffle(grid, ratio, {"v1": "v2", "v2": "v1"}[raw["ps_version"]]).reshape(3, tokens, -1)
        )
    assert features.shape == (3, tokens, raw["llm_config"]["hidden_size"])
    assert torch.equal(features, expected)
    assert not torch.allclose(features, other)  # v1 and v2 differ here, so the check can fail


def test_force_image_size_above_the_vision_image_size_interpolates_position_embeddings():
    """`force_image_size` sets the tile size and `num_image_token`; the vision tower keeps its trained position grid
    and resizes it bicubically to the tile's patch grid every forward (`InternVisionEmbeddings._get_pos_embed`)."""
    raw = json.loads((FIXTURES / "llm_families" / "phi3.json").read_text())
    raw["force_image_size"] = 56  # vision_config.image_size stays 28: a 2x2 trained grid, 4x4 patches per tile
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(InternVLConfig(**{k: v for k, v in raw.items() if k != "model_type"}))
    model = model.float().eval()
    assert model.num_image_token == 4
    embeddings = model.model.vision_model.embeddings
    pixel_values = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        position = embeddings.position_embedding
        grid = position[:, 1:, :].reshape(1, 2, 2, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
        grid = grid.reshape(1, -1, 16).permute(0, 2, 1)
        patches = embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        expected = torch.cat([embeddings.class_embedding.expand(2, 1, -1), patches], 1)
        expected = expected + torch.cat([position[:, :1, :], grid], 1)
        assert torch.equal(embeddings(pixel_values), expected)
        assert model.extract_feature(pixel_values).shape == (2, 4, raw["llm_config"]["hidden_size"])


@pytest.mark.parametrize(
    ("overrides", "tiles", "tile_size"),
    [
        ({"dynamic_image_size": False}, 1, 448),
        ({"use_thumbnail": False}, 3, 448),  # 1000x300 -> 3x1 grid, no thumbnail
        ({"force_image_size": 224}, 4, 224),  # 3x1 + thumbnail, 224 px tiles, 64 tokens each
        ({"force_image_size": 224, "dynamic_image_size": False}, 1, 224),
    ],
)
def test_original_folder_tiling_options_reach_processor_and_model(overrides, tiles, tile_size, tmp_path):
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    folder = original_model_dir(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **overrides}))
    processor = AutoProcessor.from_pretrained(folder)
    image = Image.new("RGB", (1000, 300), (120, 30, 200))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (tiles, 3, tile_size, tile_size)
    tokens = int((tile_size // 14) ** 2 * 0.25)
    assert int((inputs["input_ids"] == QWEN2_IMAGE_TOKEN_ID).sum()) == tiles * tokens
    model = AutoModel.from_pretrained(folder, image_token_id=QWEN2_IMAGE_TOKEN_ID).eval()
    assert model.num_image_token == tokens
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("system_message", ["", "Be brief.", None])
def test_config_json_system_message_gives_the_same_system_block_to_chat_and_processor(system_message, tmp_path):
    from transformers import AutoModel, AutoProcessor

    folder = original_model_dir(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "system_message": system_message}))
    model = AutoModel.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    # `null` is read as "no system message configured" (the template's default), not rendered as "None".
    expected, _ = reference_chat_prompt("internvl2_5", "Hi", None, False, [], system_message=system_message)
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == expected
    assert build_chat_prompt(model.template, "Hi", system_message=model.system_message) == expected


def test_chat_appends_to_the_callers_history_list_as_the_original(recorded, qwen2_tokenizer):
    """The original `chat` ends with `history.append((question, response))` on the caller's list, also without
    `return_history`, so code that keeps one list across turns sees every turn; a tuple is left unchanged."""
    model, calls = recorded
    history: list = []
    first = model.chat(qwen2_tokenizer, None, "Hello.", GREEDY, history=history)
    assert history == [("Hello.", first)]
    second = model.chat(qwen2_tokenizer, None, "Again.", GREEDY, history=history)
    assert history == [("Hello.", first), ("Again.", second)]
    expected, _ = reference_chat_prompt("internvl2_5", "Again.", [("Hello.", first)], False, [])
    assert torch.equal(calls[-1]["input_ids"].cpu(), qwen2_tokenizer(expected, return_tensors="pt").input_ids)
    frozen = (("Hello.", first),)
    _, returned = model.chat(qwen2_tokenizer, None, "Once more.", GREEDY, history=frozen, return_history=True)
    assert frozen == (("Hello.", first),) and returned[:1] == [("Hello.", first)] and len(returned) == 2


def test_verbose_logs_what_the_original_prints(recorded, qwen2_tokenizer):
    """`verbose=True` in the original prints `dynamic ViT batch size: N` and, without `return_history`, the query
    with the image tokens folded back to `<image>` followed by the answer; here they go to transformers' logger."""
    from transformers.testing_utils import CaptureLogger

    from transformers_internvl.modeling import chat as chat_module

    model, _ = recorded
    with CaptureLogger(chat_module.logger) as captured:
        answer = model.chat(qwen2_tokenizer, _pixels(2), "What is it?", GREEDY, verbose=True)
    expected, _ = reference_chat_prompt("internvl2_5", "What is it?", None, True, [2])
    folded = expected.replace("<IMG_CONTEXT>", "").replace("<img></img>", "<image>")
    assert "dynamic ViT batch size: 2" in captured.out
    assert f"{folded} {answer}" in captured.out
    with CaptureLogger(chat_module.logger) as captured:
        model.chat(qwen2_tokenizer, _pixels(2), "What is it?", GREEDY)
        model.batch_chat(qwen2_tokenizer, _pixels(3), ["A?", "B?"], GREEDY, num_patches_list=[1, 2], verbose=True)
    assert captured.out.strip() == "dynamic ViT batch size: 3"
