"""Conversation templates and chat()/batch_chat() prompt building against the reference prompts (fixtures section C),
and the Jinja chat template against the same prompts."""

import hashlib
import json
import re

import pytest
from helpers import FIXTURES
from transformers.utils.chat_template_utils import render_jinja_template

from transformers_internvl.chat_templates import (
    CHAT_TEMPLATE,
    expand_image_placeholders,
    expand_video_placeholders,
    get_jinja_chat_template,
    multi_image_prefix,
    video_frame_prompt,
)
from transformers_internvl.modeling.chat_prompts import (
    build_batch_chat_prompts,
    build_chat_prompt,
    get_eos_token,
    postprocess_response,
    prepare_chat_question,
)
from transformers_internvl.modeling.conversation import Conversation, get_conv_template

PROMPTS = json.loads((FIXTURES / "prompts" / "prompts.json").read_text(encoding="utf-8"))
CASES = {case["id"]: case for case in PROMPTS["cases"]}
COMPACT = re.compile(r"\[\[IMG_CONTEXT\*(\d+)\]\]")
TEMPLATES = sorted(PROMPTS["templates"])


def _expand_compact(compact: str) -> str:
    return COMPACT.sub(lambda match: "<IMG_CONTEXT>" * int(match.group(1)), compact)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _image_tokens(case):
    tokens = PROMPTS["image_tokens"]
    return {
        "image_start_token": tokens["IMG_START_TOKEN"],
        "image_end_token": tokens["IMG_END_TOKEN"],
        "image_context_token": tokens["IMG_CONTEXT_TOKEN"],
        "num_image_token": case["num_image_token"],
    }


# ---- templates as data ----------------------------------------------------------------------------------------------


def test_all_reference_templates_and_cases_are_covered():
    assert set(TEMPLATES) == {"internvl2_5", "internlm2-chat", "Hermes-2", "phi3-chat"}
    assert len(PROMPTS["cases"]) == 48


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_fields_match_the_original(name):
    reference = PROMPTS["templates"][name]
    conversation = get_conv_template(name)
    assert conversation.system_template == reference["system_template"]
    assert conversation.system_message == reference["system_message"]
    assert list(conversation.roles) == reference["roles"]
    assert conversation.sep_style.value == reference["sep_style"]
    assert conversation.sep == reference["sep"]
    assert conversation.sep2 == reference["sep2"]
    assert conversation.stop_str == reference["stop_str"]
    assert conversation.stop_token_ids == reference["stop_token_ids"]
    assert conversation.eos_token == reference["eos_token_string_used_by_chat"]
    assert get_eos_token(name) == reference["eos_token_string_used_by_chat"]


def test_get_conv_template_returns_a_fresh_copy():
    first = get_conv_template("internvl2_5")
    first.append_message(first.roles[0], "hello")
    first.system_message = "changed"
    second = get_conv_template("internvl2_5")
    assert second.messages == []
    assert second.system_message == PROMPTS["templates"]["internvl2_5"]["system_message"]


def test_unknown_template_names_the_known_ones():
    with pytest.raises(ValueError, match="internvl2_5"):
        get_conv_template("no-such-template")


def test_mpt_quirks_empty_system_and_empty_message():
    conversation = get_conv_template("internvl2_5")
    conversation.system_message = ""
    conversation.append_message(conversation.roles[0], "")
    conversation.append_message(conversation.roles[1], None)
    # The system block is still written; an empty message is its role alone, without separator.
    assert conversation.get_prompt() == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n"


def test_internvl_zh_template_renders_like_the_original():
    conversation = get_conv_template("internvl_zh")
    conversation.append_message(conversation.roles[0], "Q")
    conversation.append_message(conversation.roles[1], "A")
    conversation.append_message(conversation.roles[0], "Q2")
    conversation.append_message(conversation.roles[1], None)
    assert conversation.get_prompt() == " <human>: Q <bot>: A</s><human>: Q2 <bot>:"


# ---- chat() / batch_chat() prompts: all 48 reference cases ----------------------------------------------------------


@pytest.mark.parametrize("case_id", [cid for cid, case in CASES.items() if case["method"] == "chat"])
def test_chat_prompt_matches_reference(case_id):
    case = CASES[case_id]
    arguments = dict(
        template=case["template"],
        question=case["question"],
        history=case["history"],
        system_message=case["system_message_override"],
        num_tiles_list=case["num_patches_list"],
        pixel_values_passed=case["pixel_values_passed"],
        **_image_tokens(case),
    )
    before = build_chat_prompt(**arguments, expand_images=False)
    assert before == case["prompt_before_expansion"]
    expanded = build_chat_prompt(**arguments)
    assert expanded == _expand_compact(case["prompt_expanded_compact"])
    assert len(expanded) == case["prompt_expanded_num_chars"]
    assert _sha256(expanded) == case["prompt_expanded_sha256"]
    assert get_eos_token(case["template"]) == case["eos_token_string"]


@pytest.mark.parametrize("case_id", [cid for cid, case in CASES.items() if case["method"] == "batch_chat"])
def test_batch_chat_prompts_match_reference(case_id):
    case = CASES[case_id]
    arguments = dict(
        template=case["template"],
        questions=case["questions"],
        num_tiles_list=case["num_patches_list"],
        system_message=case["system_message_override"],
        pixel_values_passed=True,
        **_image_tokens(case),
    )
    assert build_batch_chat_prompts(**arguments, expand_images=False) == case["prompts_before_expansion"]
    expanded = build_batch_chat_prompts(**arguments)
    assert expanded == [_expand_compact(compact) for compact in case["prompts_expanded_compact"]]
    assert [len(prompt) for prompt in expanded] == case["prompts_expanded_num_chars"]
    assert [_sha256(prompt) for prompt in expanded] == case["prompts_expanded_sha256"]


def test_expansion_of_before_prompt_gives_reference_sha():
    """`expand_image_placeholders` on its own reproduces every reference expansion (FIRST remaining placeholder)."""
    for case in PROMPTS["cases"]:
        if case["method"] != "chat":
            continue
        expanded = expand_image_placeholders(
            case["prompt_before_expansion"],
            num_patches_list=case["num_patches_list"],
            num_image_token=case["num_image_token"],
        )
        assert _sha256(expanded) == case["prompt_expanded_sha256"], case["id"]


def test_num_patches_list_alias_and_conflict():
    case = CASES["internvl2_5/two_images/2-5"]
    by_alias = build_chat_prompt("internvl2_5", case["question"], num_patches_list=[2, 5])
    assert _sha256(by_alias) == case["prompt_expanded_sha256"]
    with pytest.raises(ValueError, match="num_patches_list"):
        build_chat_prompt("internvl2_5", case["question"], num_tiles_list=[2, 5], num_patches_list=[2, 5])


def test_auto_prefix_rules():
    assert prepare_chat_question("Q", None, pixel_values_passed=True) == "<image>\nQ"
    assert prepare_chat_question("Q", [], pixel_values_passed=True) == "Q"  # [] is not None
    assert prepare_chat_question("Q", None, pixel_values_passed=False) == "Q"
    assert prepare_chat_question("<image>\nQ", None, pixel_values_passed=True) == "<image>\nQ"
    # pixel_values_passed is inferred from the tile counts when not given.
    assert "<image>" not in build_chat_prompt("internvl2_5", "Q", expand_images=False)
    assert "<img>" in build_chat_prompt("internvl2_5", "Q", num_tiles_list=[1])


def test_strict_expansion_reports_both_counts():
    with pytest.raises(ValueError, match=r"1 <image> placeholder\(s\) but 2 image"):
        expand_image_placeholders("<image>\nQ", [1, 1], strict=True)


def test_batch_chat_requires_one_tile_count_per_question():
    with pytest.raises(ValueError, match="one entry per question"):
        build_batch_chat_prompts("internvl2_5", ["a", "b"], num_tiles_list=[1])
    # Text-only batch: no image tokens, no prefix.
    prompts = build_batch_chat_prompts("internvl2_5", ["a", "b"])
    assert all("<image>" not in prompt and "<img>" not in prompt for prompt in prompts)


def test_response_postprocessing_cuts_at_eos_and_strips():
    assert postprocess_response("  It is a panda. <|im_end|> junk", "internvl2_5") == "It is a panda."
    assert postprocess_response("answer<|end|>x", "phi3-chat") == "answer"
    assert postprocess_response("no eos here \n", get_conv_template("internlm2-chat")) == "no eos here"


def test_video_and_multi_image_helpers():
    assert video_frame_prompt(2) == "Frame-1: <image>\nFrame-2: <image>"
    assert video_frame_prompt(2, "Frame{i}: ") == "Frame1: <image>\nFrame2: <image>"
    assert multi_image_prefix(1) == "<image>\n"
    assert multi_image_prefix(3) == "Image-1: <image>\nImage-2: <image>\nImage-3: <image>\n"
    with pytest.raises(ValueError, match="1 <video> placeholder"):
        expand_video_placeholders("<video>\nQ", [2, 3])


# ---- Jinja chat template ------------------------------------------------------------------------------------------


def _render(template_name, messages, add_generation_prompt=True, system_message=None):
    chat_template = get_jinja_chat_template(template_name, system_message)
    rendered, _ = render_jinja_template(
        [messages], chat_template=chat_template, add_generation_prompt=add_generation_prompt
    )
    return rendered[0]


def _image():
    return {"type": "image"}


def _text(text):
    return {"type": "text", "text": text}


def _reference_messages(case):
    """Messages equivalent to a chat() case: history turns, then the question (placeholders moved to image items)."""
    messages = []
    for question, answer in case["history"] or []:
        messages.append({"role": "user", "content": _content(question)})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": _content(case["question"])})
    return messages


def _content(question):
    if question.startswith("<image>\n"):
        return [_image(), _text(question[len("<image>\n") :])]
    if question.startswith("Image-1: <image>\nImage-2: <image>\n"):
        return [_image(), _image(), _text(question[len("Image-1: <image>\nImage-2: <image>\n") :])]
    return [_text(question)]


JINJA_CASES = [
    "text_only/none",
    "single_image/1",
    "single_image/3",
    "two_images/2-5",
    "two_turn_text/none",
    "two_turn_image/3",
    "history_empty_answer/1",
]


@pytest.mark.parametrize("template_name", ["internvl2_5", "internlm2-chat", "Hermes-2", "phi3-chat"])
@pytest.mark.parametrize("case_suffix", JINJA_CASES)
def test_jinja_chat_template_matches_reference_prompt(template_name, case_suffix):
    case = CASES[f"{template_name}/{case_suffix}"]
    assert _render(template_name, _reference_messages(case)) == case["prompt_before_expansion"]


@pytest.mark.parametrize("template_name", ["internvl2_5", "internlm2-chat"])
def test_jinja_video_renders_reference_after_frame_expansion(template_name):
    case = CASES[f"{template_name}/video_4_frames/1-1-1-1"]
    messages = [{"role": "user", "content": [{"type": "video"}, _text("What is the red panda doing?")]}]
    rendered = _render(template_name, messages)
    assert rendered.count("<video>") == 1
    # The reference used the pre-2024-12-25 frame label.
    assert expand_video_placeholders(rendered, [4], frame_template="Frame{i}: ") == case["prompt_before_expansion"]


@pytest.mark.parametrize("template_name", ["internvl2_5", "internlm2-chat"])
def test_jinja_string_content_and_auto_prefix_case(template_name):
    case = CASES[f"{template_name}/single_image_auto_prefix/1"]
    messages = [{"role": "user", "content": [_image(), _text(case["question"])]}]
    assert _render(template_name, messages) == case["prompt_before_expansion"]


@pytest.mark.parametrize("template_name", ["internvl2_5", "internlm2-chat"])
def test_jinja_leading_system_message_overrides_default(template_name):
    case = CASES[f"{template_name}/text_only/none"]
    default_system = PROMPTS["templates"][template_name]["system_message"]
    expected = case["prompt_before_expansion"].replace(default_system, "You are a careful assistant.")
    messages = [{"role": "system", "content": "You are a careful assistant."}, *_reference_messages(case)]
    assert _render(template_name, messages) == expected
    # Content-list form of the system message, and the same override through build_chat_prompt.
    messages[0] = {"role": "system", "content": [_text("You are a careful assistant.")]}
    assert _render(template_name, messages) == expected
    assert build_chat_prompt(template_name, case["question"], system_message="You are a careful assistant.") == expected
    # An empty system message still writes the system block (original quirk).
    messages[0] = {"role": "system", "content": ""}
    assert _render(template_name, messages) == case["prompt_before_expansion"].replace(default_system, "")


def test_jinja_default_system_message_can_come_from_the_config():
    rendered = _render("internvl2_5", [{"role": "user", "content": "Hi"}], system_message="From config.")
    assert rendered.startswith("<|im_start|>system\nFrom config.<|im_end|>\n")


def test_jinja_without_generation_prompt_and_with_final_assistant_turn():
    case = CASES["internvl2_5/two_turn_text/none"]
    messages = _reference_messages(case)[:2]
    rendered = _render("internvl2_5", messages, add_generation_prompt=False)
    expected_prefix = case["prompt_before_expansion"].split("<|im_start|>user\nCan you tell me")[0]
    assert rendered == expected_prefix


def test_jinja_images_across_turns_are_numbered_over_the_conversation():
    messages = [
        {"role": "user", "content": [_image(), _text("first")]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [_image(), _text("second")]},
    ]
    rendered = _render("internvl2_5", messages)
    assert "user\nImage-1: <image>\nfirst<|im_end|>" in rendered
    assert "user\nImage-2: <image>\nsecond<|im_end|>" in rendered


def test_jinja_rejects_system_message_in_the_middle():
    messages = [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]
    with pytest.raises(Exception, match="leading system message"):
        _render("internvl2_5", messages)


def test_chat_template_constant_is_the_internvl2_5_template():
    assert CHAT_TEMPLATE == get_jinja_chat_template("internvl2_5")
    assert isinstance(get_conv_template("internvl2_5"), Conversation)


# ---- every template of the original: fields, stop strings, prompts, Jinja ------------------------------------------

# The definitions as written in OpenGVLab/InternVL internvl_chat/internvl/conversation.py (internvl_zh, Hermes-2,
# internlm2-chat, phi3-chat, internvl2_5) and internvl_chat_gpt_oss/internvl/model/internvl_chat/conversation.py
# (internvl3_5_gpt_oss): name -> (system_template, roles, sep_style, sep, sep2, stop_str).
ORIGINAL_DEFINITIONS = {
    "internvl_zh": ("", ("<human>", "<bot>"), "INTERNVL_ZH", "</s>", " ", None),
    "Hermes-2": (
        "<|im_start|>system\n{system_message}",
        ("<|im_start|>user\n", "<|im_start|>assistant\n"),
        "MPT",
        "<|im_end|>",
        None,
        "<|endoftext|>",
    ),
    "internlm2-chat": (
        "<|im_start|>system\n{system_message}",
        ("<|im_start|>user\n", "<|im_start|>assistant\n"),
        "MPT",
        "<|im_end|>",
        None,
        None,
    ),
    "phi3-chat": ("<|system|>\n{system_message}", ("<|user|>\n", "<|assistant|>\n"), "MPT", "<|end|>", None, None),
    "internvl2_5": (
        "<|im_start|>system\n{system_message}",
        ("<|im_start|>user\n", "<|im_start|>assistant\n"),
        "MPT",
        "<|im_end|>\n",
        None,
        None,
    ),
    "internvl3_5_gpt_oss": (
        "<|start|>system<|message|>{system_message}",
        ("<|start|>user<|message|>", "<|start|>assistant"),
        "MPT_TWO",
        "<|end|>",
        "<|return|>",
        None,
    ),
}
GPT_OSS_SYSTEM = (
    "You are InternVL, a large language model trained by Shanghai AI Laboratory.\nKnowledge cutoff: 2024-06\n"
    "Current date: 2025-08-06\n\nReasoning: low\n\n# Valid channels: final. Channel must be included for every message."
)
# What the original chat() converts to `eos_token_id` and cuts the answer at: `template.sep.strip()`
# (internvl_chat), `template.sep2.strip()` when sep2 is set (internvl_chat_gpt_oss, the only code with that template).
EXPECTED_STOP = {
    "internvl_zh": "</s>",
    "Hermes-2": "<|im_end|>",
    "internlm2-chat": "<|im_end|>",
    "phi3-chat": "<|end|>",
    "internvl2_5": "<|im_end|>",
    "internvl3_5_gpt_oss": "<|return|>",
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_DEFINITIONS))
def test_every_original_template_is_registered_with_its_fields(name):
    system_template, roles, sep_style, sep, sep2, stop_str = ORIGINAL_DEFINITIONS[name]
    conversation = get_conv_template(name)
    assert conversation.system_template == system_template
    assert conversation.roles == roles
    assert conversation.sep_style.value == sep_style
    assert (conversation.sep, conversation.sep2, conversation.stop_str) == (sep, sep2, stop_str)
    assert conversation.eos_token == get_eos_token(name) == EXPECTED_STOP[name]


def test_gpt_oss_system_message_is_the_original():
    assert get_conv_template("internvl3_5_gpt_oss").system_message == GPT_OSS_SYSTEM


def test_gpt_oss_chat_prompt_from_the_original_get_prompt():
    # MPT_TWO: system block + sep, every message role + text + sep, the open assistant turn is its role alone.
    expected = (
        "<|start|>system<|message|>" + GPT_OSS_SYSTEM + "<|end|>"
        "<|start|>user<|message|>Q1<|end|><|start|>assistantA1<|end|>"
        "<|start|>user<|message|><image>\nQ2<|end|><|start|>assistant"
    )
    prompt = build_chat_prompt("internvl3_5_gpt_oss", "<image>\nQ2", history=[("Q1", "A1")], expand_images=False)
    assert prompt == expected
    # A final answer (training layout) ends with sep2 instead of sep; earlier answers keep sep.
    conversation = get_conv_template("internvl3_5_gpt_oss")
    conversation.system_message = "S"
    for role, message in zip(conversation.roles * 2, ["Q1", "A1", "Q2", "A2"]):
        conversation.append_message(role, message)
    assert conversation.get_prompt() == (
        "<|start|>system<|message|>S<|end|><|start|>user<|message|>Q1<|end|><|start|>assistantA1<|end|>"
        "<|start|>user<|message|>Q2<|end|><|start|>assistantA2<|return|>"
    )
    assert postprocess_response("<|channel|>final<|message|>Hi.<|return|>junk", "internvl3_5_gpt_oss") == (
        "<|channel|>final<|message|>Hi."
    )


def test_internvl_zh_chat_prompt_from_the_original_get_prompt():
    # INTERNVL_ZH (internvl_chat): seps = [sep2, sep]; system message + seps[0], then role + ": " + message + seps[i % 2]
    prompt = build_chat_prompt("internvl_zh", "Q2", history=[("Q1", "A1")], num_tiles_list=[2], expand_images=False)
    assert prompt == " <human>: Q1 <bot>: A1</s><human>: Q2 <bot>:"
    prompt = build_chat_prompt("internvl_zh", "Q", num_tiles_list=[1], system_message="S", expand_images=False)
    assert prompt == "S <human>: <image>\nQ <bot>:"


def _conversation_prompt(name, turns, system_message=None, add_generation_prompt=True):
    conversation = get_conv_template(name)
    if system_message is not None:
        conversation.system_message = system_message
    for role, message in turns:
        conversation.append_message(conversation.roles[0 if role == "user" else 1], message)
    if add_generation_prompt:
        conversation.append_message(conversation.roles[1], None)
    return conversation.get_prompt()


TURN_SEQUENCES = [
    [("user", "Hello")],
    [("user", "Q1"), ("assistant", "A1"), ("user", "Q2")],
    [("user", "Q1"), ("assistant", "A1")],
    [("user", "Q1"), ("assistant", ""), ("user", "Q2")],
    [("user", "a"), ("user", "b"), ("assistant", "c")],
]


@pytest.mark.parametrize("name", sorted(ORIGINAL_DEFINITIONS))
@pytest.mark.parametrize("turns", range(len(TURN_SEQUENCES)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_template_equals_get_prompt_for_every_template(name, turns, add_generation_prompt):
    turns = TURN_SEQUENCES[turns]
    messages = [{"role": role, "content": text} for role, text in turns]
    expected = _conversation_prompt(name, turns, add_generation_prompt=add_generation_prompt)
    assert _render(name, messages, add_generation_prompt=add_generation_prompt) == expected
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    expected = _conversation_prompt(name, turns, "Be brief.", add_generation_prompt)
    assert _render(name, with_system, add_generation_prompt=add_generation_prompt) == expected


@pytest.mark.parametrize("name", sorted(ORIGINAL_DEFINITIONS))
def test_jinja_image_items_for_every_template(name):
    messages = [{"role": "user", "content": [_image(), _text("Describe.")]}]
    expected = build_chat_prompt(name, "Describe.", num_tiles_list=[3], expand_images=False)
    assert _render(name, messages) == expected


def test_jinja_generation_marks_answer_and_trained_separator():
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    for name, answer in (
        ("internvl2_5", "A<|im_end|>"),
        ("internvl3_5_gpt_oss", "A<|return|>"),
        ("phi3-chat", "A<|end|>"),
    ):
        rendered, generation_indices = render_jinja_template(
            [messages], chat_template=get_jinja_chat_template(name), return_assistant_tokens_mask=True
        )
        ((start, end),) = generation_indices[0]
        assert rendered[0][start:end] == answer


# ---- one template registry for chat(), the processor and model loading ---------------------------------------------


@pytest.fixture
def restored_registries():
    from transformers_internvl import chat_templates

    saved = dict(chat_templates.TEMPLATES)
    yield
    chat_templates.TEMPLATES.clear()
    chat_templates.TEMPLATES.update(saved)


def _qwen2_processor(**kwargs):
    from helpers import QWEN2_TOKENIZER
    from transformers import AutoTokenizer

    from transformers_internvl import InternVLChatProcessor

    return InternVLChatProcessor(tokenizer=AutoTokenizer.from_pretrained(QWEN2_TOKENIZER), **kwargs)


def test_registered_template_serves_chat_the_processor_and_the_stop_token(restored_registries):
    from transformers_internvl.chat_templates import SeparatorStyle, template_eos_token
    from transformers_internvl.modeling.conversation import register_conv_template

    register_conv_template(
        Conversation(
            name="custom-test",
            system_template="<|im_start|>system\n{system_message}",
            system_message="SYS",
            roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
            sep_style=SeparatorStyle.MPT,
            sep="<|endoftext|>",
        )
    )
    messages = [{"role": "user", "content": "hi"}]
    rendered = _qwen2_processor(template="custom-test").apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    expected = "<|im_start|>system\nSYS<|endoftext|><|im_start|>user\nhi<|endoftext|><|im_start|>assistant\n"
    assert rendered == build_chat_prompt("custom-test", "hi") == expected
    assert template_eos_token("custom-test") == "<|endoftext|>"


def test_overriding_a_template_changes_every_path(restored_registries):
    from transformers_internvl.modeling.conversation import register_conv_template

    template = get_conv_template("internvl2_5")
    template.system_message = "OVERRIDDEN"
    register_conv_template(template, override=True)
    rendered = _qwen2_processor().apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == build_chat_prompt("internvl2_5", "hi")
    assert rendered.startswith("<|im_start|>system\nOVERRIDDEN<|im_end|>\n")


def test_system_template_without_a_message_field_renders_as_get_prompt(restored_registries):
    from transformers_internvl.chat_templates import SeparatorStyle
    from transformers_internvl.modeling.conversation import register_conv_template

    register_conv_template(
        Conversation(
            name="fixed-system-test",
            system_template="You are {{helpful}}.",
            roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
            sep_style=SeparatorStyle.MPT,
            sep="<|im_end|>\n",
        )
    )
    conversation = get_conv_template("fixed-system-test")
    conversation.append_message(conversation.roles[0], "hi")
    conversation.append_message(conversation.roles[1], None)
    assert conversation.get_prompt().startswith("You are {helpful}.<|im_end|>\n")
    assert build_chat_prompt("fixed-system-test", "hi") == conversation.get_prompt()
    # The original's format() ignores the system message when the template has no field for it.
    assert build_chat_prompt("fixed-system-test", "hi", system_message="other") == conversation.get_prompt()


@pytest.mark.parametrize(
    ("history", "error", "match"),
    [
        ([{"role": "user", "content": "q"}], ValueError, r"`history\[0\]` must be a \(question, answer\) pair"),
        (["ab"], ValueError, r"`history\[0\]` must be a \(question, answer\) pair"),
        ([("q", "a"), (1, 2)], TypeError, r"question of `history\[1\]` must be a str, got int"),
        ([("q", 5)], TypeError, r"answer of `history\[0\]` must be a str"),
    ],
)
def test_bad_history_entries_are_named(history, error, match):
    with pytest.raises(error, match=match):
        build_chat_prompt("internvl2_5", "now", history=history)


def test_conversation_with_a_foreign_role_is_refused():
    conversation = get_conv_template("internvl2_5")
    conversation.append_message("weird_role", "x")
    with pytest.raises(ValueError, match="role 'weird_role'"):
        build_chat_prompt(conversation, "now")
