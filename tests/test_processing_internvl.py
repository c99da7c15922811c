"""InternVLProcessor: placeholder expansion, batching, pixel ordering, errors, save/reload, AutoProcessor on original
checkpoint directories and apply_chat_template with images and videos."""

import functools
import http.server
import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FIXTURES, INTERNLM2_DIR, MODELS, QWEN2_TOKENIZER, TOKENIZERS, copy_tokenizer, tokenized_chat
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, AutoTokenizer

import transformers_internvl  # noqa: F401  (registers the Auto classes)
from transformers_internvl.modeling.chat_prompts import build_chat_prompt
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.processing.processing_internvl import InternVLChatProcessor, InternVLProcessor
from transformers_internvl.processing.video_processing_internvl import InternVLVideoProcessor

IMAGES = FIXTURES / "preprocess" / "images"
INTERNLM2_TOKENIZERS = [
    TOKENIZERS / "internlm2-no-dummy-prefix",
    TOKENIZERS / "internlm2-dummy-prefix",
]
PROMPTS = json.loads((FIXTURES / "prompts" / "prompts.json").read_text(encoding="utf-8"))
CASES = {case["id"]: case for case in PROMPTS["cases"]}
COMPACT = re.compile(r"\[\[IMG_CONTEXT\*(\d+)\]\]")
# Tiles per image from the preprocessing fixtures (fixtures README section B).
TILES_AT_MAX6 = {"rgb_1920x1080": 3, "rgba_800x600": 7, "rgb_448x448": 1, "rgb_500x3000": 7}


def _expand_compact(compact: str) -> str:
    return COMPACT.sub(lambda match: "<IMG_CONTEXT>" * int(match.group(1)), compact)


def _image(name: str) -> Image.Image:
    return Image.open(IMAGES / f"{name}.png")


def _frames(count: int, seed: int) -> list[Image.Image]:
    generator = np.random.default_rng(seed)
    return [Image.fromarray(generator.integers(0, 256, (64, 80, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def qwen2_tokenizer():
    return AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)


@pytest.fixture(scope="module")
def processor(qwen2_tokenizer):
    return InternVLProcessor(
        image_processor=InternVLImageProcessor(max_dynamic_patch=6),
        tokenizer=qwen2_tokenizer,
        video_processor=InternVLVideoProcessor(),
    )


def _ids(processor, token):
    return processor.tokenizer.convert_tokens_to_ids(token)


def _original_dir(tmp_path: Path, tokenizer_dir: Path, model_name: str, **config_changes) -> Path:
    """An original OpenGVLab-layout directory: config.json + tokenizer files, no processor files."""
    directory = tmp_path / f"original-{model_name}-{tokenizer_dir.name}"
    directory.mkdir()
    copy_tokenizer(tokenizer_dir.name, directory)
    config = json.loads((MODELS / model_name / "config.json").read_text())
    config.update(config_changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# ---- expansion and token counts ---------------------------------------------------------------------------------


def test_num_image_token_is_derived_from_sizes(qwen2_tokenizer):
    assert InternVLProcessor(tokenizer=qwen2_tokenizer).num_image_token == 256  # (448 // 14)**2 * 0.5**2
    assert InternVLProcessor(tokenizer=qwen2_tokenizer, image_size=224).num_image_token == 64
    assert InternVLProcessor(tokenizer=qwen2_tokenizer, downsample_ratio=1.0).num_image_token == 1024


def test_token_strings_and_ids_come_from_the_tokenizer(processor):
    assert processor.image_token_id == 995 and processor.image_start_token_id == 993
    assert processor.image_end_token_id == 994
    assert processor.chat_eos_token == "<|im_end|>" and processor.chat_eos_token_id == 992


def test_single_image_expansion_counts_and_pixels(processor):
    image = _image("rgb_1920x1080")
    out = processor(text="<image>\nDescribe.", images=image, return_tensors="pt")
    ids = out["input_ids"][0]
    assert (ids == _ids(processor, "<IMG_CONTEXT>")).sum() == 256 * 3
    assert (ids == _ids(processor, "<img>")).sum() == 1 and (ids == _ids(processor, "</img>")).sum() == 1
    assert out["num_tiles"].tolist() == [3]
    direct = processor.image_processor(images=image, return_tensors="pt")
    assert torch.equal(out["pixel_values"], direct["pixel_values"])
    # The same tiles as the original preprocessing of this image at max_num=6 (tiny-internlm2's io pixel_values).
    reference = load_file(INTERNLM2_DIR / "io.safetensors")["pixel_values"]
    assert torch.allclose(out["pixel_values"], reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("case_id", "sizes", "images_kwargs"),
    [
        ("internvl2_5/single_image/3", [(1920, 1080)], {"max_dynamic_patch": 6}),  # 2x1 grid + thumbnail
        ("internvl2_5/two_images/2-5", [(896, 448), (2240, 448)], {"max_dynamic_patch": 5, "use_thumbnail": False}),
        ("internvl2_5/two_turn_image/3", [(1920, 1080)], {"max_dynamic_patch": 6}),
    ],
)
def test_ids_equal_the_tokenized_reference_prompt(processor, case_id, sizes, images_kwargs):
    """Processor ids for the reference prompt == tokenizer ids of the reference expansion (tile counts from pixels)."""
    case = CASES[case_id]
    images = [Image.new("RGB", size, (40, 90, 160)) for size in sizes]
    out = processor(
        text=case["prompt_before_expansion"],
        images=[images],
        max_total_tiles=None,
        return_tensors="pt",
        **images_kwargs,
    )
    assert out["num_tiles"].tolist() == case["num_patches_list"]
    expected = processor.tokenizer(_expand_compact(case["prompt_expanded_compact"]), return_tensors="pt")
    assert torch.equal(out["input_ids"], expected["input_ids"])


def test_prompt_from_build_chat_prompt_round_trips(processor):
    image = _image("rgba_800x600")
    prompt = build_chat_prompt("internvl2_5", "What is it?", pixel_values_passed=True, expand_images=False)
    out = processor(text=prompt, images=[image], return_tensors="pt")
    expected = build_chat_prompt("internvl2_5", "What is it?", num_tiles_list=out["num_tiles"].tolist())
    assert processor.tokenizer.decode(out["input_ids"][0]) == expected


def test_auto_prefix_single_and_multi_image(processor):
    one = processor(text="Describe.", images=[_image("rgb_448x448")])
    assert processor.tokenizer.decode(one["input_ids"][0]).startswith("<img>")
    assert processor.tokenizer.decode(one["input_ids"][0]).endswith("</img>\nDescribe.")
    two = processor(text="Compare.", images=[_image("rgb_448x448"), _image("rgb_449x447")])
    text = processor.tokenizer.decode(two["input_ids"][0]).replace("<IMG_CONTEXT>", "")
    assert text == "Image-1: <img></img>\nImage-2: <img></img>\nCompare."


def test_placeholder_count_mismatch_raises_with_both_counts(processor):
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) but 1 image"):
        processor(text="<image> and <image>", images=[_image("rgb_448x448")])
    with pytest.raises(ValueError, match=r"1 <image> placeholder\(s\) but 0 image"):
        processor(text=["<image> a", "<image> b"], images=[[_image("rgb_448x448")], []])
    with pytest.raises(ValueError, match=r"1 <video> placeholder\(s\) but 0 video"):
        processor(text="<video>\nQ", images=None)
    with pytest.raises(ValueError, match="text"):
        processor(images=[_image("rgb_448x448")])


def test_batch_is_left_padded_by_default(processor):
    out = processor(
        text=["<image>\nshort", "a much longer question without any image at all"],
        images=[[_image("rgb_448x448")], []],
        padding=True,
        return_tensors="pt",
    )
    mask = out["attention_mask"]
    assert mask.shape[0] == 2 and mask[0].sum() > mask[1].sum()  # the image sample is longer
    shorter = mask[1]
    num_pad = int((shorter == 0).sum())
    assert num_pad > 0 and shorter[:num_pad].eq(0).all() and shorter[num_pad:].eq(1).all()
    assert out["input_ids"][1, :num_pad].eq(processor.tokenizer.pad_token_id).all()
    right = processor(
        text=["<image>\nshort", "longer text"],
        images=[[_image("rgb_448x448")], []],
        padding=True,
        padding_side="right",
        return_tensors="pt",
    )
    assert right["attention_mask"][1, 0] == 1 and right["attention_mask"][1, -1] == 0


def test_flat_image_list_is_distributed_by_placeholder_counts(processor):
    a, b, c = _image("rgb_448x448"), _image("rgb_1920x1080"), _image("rgb_449x447")
    flat = processor(text=["<image> <image>", "<image>"], images=[a, b, c], padding=True, return_tensors="pt")
    nested = processor(text=["<image> <image>", "<image>"], images=[[a, b], [c]], padding=True, return_tensors="pt")
    assert torch.equal(flat["input_ids"], nested["input_ids"])
    assert torch.equal(flat["pixel_values"], nested["pixel_values"])


def test_pixel_values_follow_placeholder_order_across_images_and_videos(processor):
    a, b = _image("rgb_1920x1080"), _image("rgba_800x600")
    video_1, video_2 = _frames(3, seed=1), _frames(2, seed=2)
    out = processor(
        text=["<image>\n<video>\nfirst", "<video>\nthen <image>\nsecond"],
        images=[[a], [b]],
        videos=[[video_1], [video_2]],
        padding=True,
        return_tensors="pt",
    )
    tiles_a = processor.image_processor(images=a, return_tensors="pt")["pixel_values"]
    tiles_b = processor.image_processor(images=b, return_tensors="pt")["pixel_values"]
    frames = processor.video_processor(videos=[video_1, video_2], return_tensors="pt")["pixel_values_videos"]
    expected = torch.cat([tiles_a, frames[:3], frames[3:], tiles_b])
    assert torch.equal(out["pixel_values"], expected)
    assert out["num_tiles"].tolist() == [3, 1, 1, 1, 1, 1, 7]
    # Every <IMG_CONTEXT> row of the batch is matched by exactly one tile row, in order.
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 256 * out["pixel_values"].shape[0]


def test_video_placeholder_becomes_frame_lines(processor, qwen2_tokenizer):
    video = _frames(4, seed=3)
    out = processor(text="<video>\nWhat happens?", videos=[video])
    decoded = processor.tokenizer.decode(out["input_ids"][0]).replace("<IMG_CONTEXT>" * 256, "X")
    assert (
        decoded
        == "Frame-1: <img>X</img>\nFrame-2: <img>X</img>\nFrame-3: <img>X</img>\nFrame-4: <img>X</img>\nWhat happens?"
    )
    assert out["num_tiles"] == [1, 1, 1, 1]
    old_style = InternVLProcessor(
        image_processor=processor.image_processor,
        tokenizer=qwen2_tokenizer,
        video_processor=processor.video_processor,
        video_frame_template="Frame{i}: ",
    )
    # Without a placeholder the video is prefixed, with the pre-2024-12-25 frame labels: the reference video prompt.
    case = CASES["internvl2_5/video_4_frames/1-1-1-1"]
    prompt = case["prompt_before_expansion"].replace(
        "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nFrame4: <image>\n", "<video>\n"
    )
    ids = old_style(text=prompt, videos=[video], return_tensors="pt")["input_ids"]
    expected = qwen2_tokenizer(_expand_compact(case["prompt_expanded_compact"]), return_tensors="pt")["input_ids"]
    assert torch.equal(ids, expected)


# ---- save / load ------------------------------------------------------------------------------------------------


def _outputs(processor):
    return processor(
        text=["<image>\nQ1", "Image-1: <image>\nImage-2: <image>\nQ2"],
        images=[[_image("rgb_500x3000")], [_image("rgb_448x448"), _image("rgb_1500x1200")]],
        padding=True,
        return_tensors="pt",
    )


def test_save_and_reload_gives_identical_outputs(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file() and (tmp_path / "chat_template.jinja").is_file()
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "InternVLChatProcessor"
    assert saved["image_processor"]["max_dynamic_patch"] == 6
    for loader in (InternVLProcessor.from_pretrained, AutoProcessor.from_pretrained):
        reloaded = loader(tmp_path)
        assert isinstance(reloaded, InternVLProcessor)
        assert reloaded.chat_template == processor.chat_template
        assert reloaded.to_dict() == processor.to_dict()
        before, after = _outputs(processor), _outputs(reloaded)
        assert before.keys() == after.keys()
        for key in before:
            assert torch.equal(torch.as_tensor(before[key]), torch.as_tensor(after[key])), key


def test_autoprocessor_on_original_qwen2_directory(tmp_path):
    directory = _original_dir(tmp_path, QWEN2_TOKENIZER, "tiny-qwen2")
    processor = AutoProcessor.from_pretrained(directory)
    assert type(processor) is InternVLProcessor is InternVLChatProcessor
    assert processor.template == "internvl2_5" and processor.num_image_token == 256
    assert processor.image_processor.max_dynamic_patch == 12 and processor.image_processor.use_thumbnail
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hello, who are you?"}]}]
    assert (
        processor.apply_chat_template(messages, add_generation_prompt=True)
        == CASES["internvl2_5/text_only/none"]["prompt_before_expansion"]
    )


def test_original_directory_config_fields_become_processor_defaults(tmp_path):
    directory = _original_dir(
        tmp_path,
        QWEN2_TOKENIZER,
        "tiny-qwen2",
        template="Hermes-2",
        max_dynamic_patch=6,
        min_dynamic_patch=2,
        use_thumbnail=False,
        system_message="Config system.",
        downsample_ratio=0.25,
    )
    processor = AutoProcessor.from_pretrained(directory)
    assert processor.template == "Hermes-2" and processor.num_image_token == 64
    assert processor.image_processor.max_dynamic_patch == 6 and processor.image_processor.min_dynamic_patch == 2
    assert processor.image_processor.use_thumbnail is False
    rendered = processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert (
        rendered == "<|im_start|>system\nConfig system.<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"
    )
    # The original's own preprocessor_config.json (a CLIP image processor config) does not change the defaults.
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {"crop_size": 448, "do_center_crop": True, "image_processor_type": "CLIPImageProcessor", "size": 448}
        )
    )
    assert AutoProcessor.from_pretrained(directory).image_processor.max_dynamic_patch == 6


@pytest.mark.parametrize("tokenizer_dir", INTERNLM2_TOKENIZERS, ids=lambda path: path.name)
def test_autoprocessor_on_original_internlm2_directory(tmp_path, tokenizer_dir):
    directory = _original_dir(tmp_path, tokenizer_dir, "tiny-internlm2")
    processor = AutoProcessor.from_pretrained(directory)
    assert processor.template == "internlm2-chat"
    assert processor.image_token_id == 602 and processor.chat_eos_token_id == 598
    case = CASES["internlm2-chat/single_image/3"]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Please describe the image shortly."}]}
    ]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == case["prompt_before_expansion"]
    out = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": _image("rgb_1920x1080")},
                    {"type": "text", "text": "Please describe the image shortly."},
                ],
            }
        ],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"max_dynamic_patch": 6},
    )
    assert out["num_tiles"].tolist() == [3]
    # As the original chat(): the tokenizer adds its BOS to the expanded prompt.
    expected = processor.tokenizer(_expand_compact(case["prompt_expanded_compact"]), return_tensors="pt")["input_ids"]
    assert expected[0, 0] == processor.tokenizer.bos_token_id
    assert torch.equal(out["input_ids"], expected)


# ---- apply_chat_template with real inputs --------------------------------------------------------------------------


def _single_image_messages(image_item):
    return [{"role": "user", "content": [image_item, {"type": "text", "text": "Please describe the image shortly."}]}]


def _assert_equals_direct_call(processor, out, image):
    prompt = CASES["internvl2_5/single_image/1"]["prompt_before_expansion"]
    direct = processor(text=prompt, images=[image], return_tensors="pt")
    for key in direct:
        assert torch.equal(torch.as_tensor(out[key]), torch.as_tensor(direct[key])), key


def test_apply_chat_template_with_pil_image(processor):
    image = _image("rgb_1920x1080")
    out = processor.apply_chat_template(
        _single_image_messages({"type": "image", "image": image}),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    assert out["pixel_values"].shape == (3, 3, 448, 448)
    _assert_equals_direct_call(processor, out, image)
    single_tile = tokenized_chat(
        processor, _single_image_messages({"type": "image", "image": image}), {"max_dynamic_patch": 1}
    )
    assert single_tile["num_tiles"].tolist() == [1]


def test_apply_chat_template_with_local_path(processor):
    path = IMAGES / "rgba_800x600.png"
    out = processor.apply_chat_template(
        _single_image_messages({"type": "image", "path": str(path)}),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    assert out["num_tiles"].tolist() == [7]
    _assert_equals_direct_call(processor, out, Image.open(path))


@pytest.fixture()
def image_server():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(IMAGES))
    handler.log_message = lambda *args, **kwargs: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_apply_chat_template_with_url(processor, image_server):
    out = processor.apply_chat_template(
        _single_image_messages({"type": "image", "url": f"{image_server}/rgb_1920x1080.png"}),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    _assert_equals_direct_call(processor, out, _image("rgb_1920x1080"))


def test_apply_chat_template_batch_of_conversations(processor):
    conversations = [
        _single_image_messages({"type": "image", "image": _image("rgb_448x448")}),
        [{"role": "user", "content": [{"type": "text", "text": "Only text here, a little longer."}]}],
    ]
    out = tokenized_chat(processor, conversations, {"padding": True})
    assert out["input_ids"].shape[0] == 2 and out["num_tiles"].tolist() == [1]
    assert out["attention_mask"][1, 0] == 0  # left padding


def test_apply_chat_template_with_video_frames(processor):
    video = _frames(3, seed=4)
    messages = [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "What?"}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|im_start|>user\n<video>\nWhat?<|im_end|>" in rendered
    out = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert out["num_tiles"].tolist() == [1, 1, 1]
    text = processor.tokenizer.decode(out["input_ids"][0]).replace("<IMG_CONTEXT>" * 256, "X")
    assert (
        "<|im_start|>user\nFrame-1: <img>X</img>\nFrame-2: <img>X</img>\nFrame-3: <img>X</img>\nWhat?<|im_end|>" in text
    )


def _write_video(path: Path, num_frames: int) -> Path:
    av = pytest.importorskip("av")
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=5)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for index in range(num_frames):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 20, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def test_apply_chat_template_with_video_file(processor, tmp_path):
    path = _write_video(tmp_path / "clip.mp4", num_frames=10)
    messages = [{"role": "user", "content": [{"type": "video", "path": str(path)}, {"type": "text", "text": "What?"}]}]
    out = tokenized_chat(processor, messages, {"num_frames": 4})
    assert out["num_tiles"].tolist() == [1, 1, 1, 1]
    direct = processor.video_processor(videos=str(path), num_segments=4, return_tensors="pt")
    assert torch.equal(out["pixel_values"], direct["pixel_values_videos"])
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 4 * 256


def test_assistant_tokens_mask_covers_answers_and_im_end(processor):
    """The mask follows the original training labels: answer + `<|im_end|>` supervised, the newline after it not."""
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Ciao"},
    ]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    supervised = processor.tokenizer.decode([token for token, flag in zip(ids, mask) if flag])
    assert supervised == "Hello there<|im_end|>Ciao<|im_end|>"
    assert processor.apply_chat_template(messages[:2], continue_final_message=True).endswith(
        "<|im_start|>assistant\nHello there"
    )


def test_from_pretrained_keyword_overrides(tmp_path):
    directory = _original_dir(tmp_path, QWEN2_TOKENIZER, "tiny-qwen2")
    processor = InternVLProcessor.from_pretrained(
        directory, max_dynamic_patch=4, max_total_tiles=None, num_segments=6, video_frame_template="Frame{i}: "
    )
    assert processor.image_processor.max_dynamic_patch == 4 and processor.image_processor.max_total_tiles is None
    assert processor.video_processor.num_segments == 6 and processor.video_frame_template == "Frame{i}: "
    assert processor.video_prompt(2) == "Frame1: <image>\nFrame2: <image>"


def test_processor_outputs_drive_the_model_batched_like_single(tmp_path):
    """The BatchFeature feeds `generate` as is; a left-padded batch gives the same greedy tokens as each sample."""
    from transformers import AutoModelForImageTextToText

    directory = _original_dir(tmp_path, QWEN2_TOKENIZER, "tiny-qwen2")
    for file in (FIXTURES / "models" / "tiny-qwen2").iterdir():
        if file.name != "config.json":
            shutil.copy(file, directory / file.name)
    processor = AutoProcessor.from_pretrained(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory).eval()
    conversations = [
        _single_image_messages({"type": "image", "image": _image("rgb_1920x1080")}),
        [{"role": "user", "content": [{"type": "text", "text": "Hello there, who are you?"}]}],
    ]
    settings = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    generation = dict(
        max_new_tokens=3,
        do_sample=False,
        eos_token_id=processor.chat_eos_token_id,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    batch = processor.apply_chat_template(
        conversations, **settings, processor_kwargs={"padding": True, "max_dynamic_patch": 6}
    )
    batched = model.generate(**batch, **generation)[:, -3:]
    for index, conversation in enumerate(conversations):
        single = processor.apply_chat_template(conversation, **settings, processor_kwargs={"max_dynamic_patch": 6})
        assert torch.equal(model.generate(**single, **generation)[0, -3:], batched[index])
