"""Checkpoint conversion original <-> transformers' built-in InternVL port (`-hf` layout): numbers against the
original implementation's reference outputs, bit-exact round trips, processor / tokenizer parity, streaming and
atomic output, and the errors of the `convert` command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES, MODELS, image_token_id, original_model_dir
from PIL import Image
from safetensors.torch import load_file, save_file

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.cli import main
from transformers_internvl.conversion.convert import ConversionError, convert_checkpoint, parse_size
from transformers_internvl.conversion.hf_layout import ORIGINAL_RECORD_KEY
from transformers_internvl.conversion.verify import verify_conversion

SRC_ROOT = Path(transformers_internvl.__file__).resolve().parents[1]
PROG = "transformers-internvl"


def _llama_model(directory: Path) -> Path:
    """tiny-qwen2 with its LLM declared as Llama (Qwen2 = Llama with q/k/v biases; Llama's `attention_bias` adds an
    o_proj bias, zero here), so the Qwen2 reference logits of the original implementation still hold."""
    from test_modeling_internvl import llama_llm_config_like_qwen2

    directory.mkdir(parents=True)
    config = json.loads((MODELS / "tiny-qwen2" / "config.json").read_text())
    qwen2 = config["llm_config"]
    config["llm_config"] = llama_llm_config_like_qwen2(qwen2)
    config["image_token_id"] = image_token_id("tiny-qwen2")
    (directory / "config.json").write_text(json.dumps(config))
    state_dict = load_file(MODELS / "tiny-qwen2" / "model.safetensors")
    for layer in range(qwen2["num_hidden_layers"]):
        state_dict[f"language_model.model.layers.{layer}.self_attn.o_proj.bias"] = torch.zeros(qwen2["hidden_size"])
    save_file(state_dict, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("conversion")


@pytest.fixture(scope="module")
def sources(workdir) -> dict[str, Path]:
    """Original-layout checkpoints: qwen2 (with its tokenizer), internlm2 (no tokenizer: the reference inputs use
    id 997 for <IMG_CONTEXT>), internlm2-tok (with the InternLM2 tokenizer), llama."""
    return {
        "qwen2": original_model_dir(workdir / "qwen2", "tiny-qwen2", "qwen2-tiny"),
        "internlm2": original_model_dir(workdir / "internlm2", "tiny-internlm2", None),
        "internlm2-tok": original_model_dir(workdir / "internlm2-tok", "tiny-internlm2", "internlm2-dummy-prefix"),
        "llama": _llama_model(workdir / "llama"),
    }


@pytest.fixture(scope="module")
def converted(workdir, sources) -> dict[str, Path]:
    token_ids = {"internlm2": image_token_id("tiny-internlm2")}
    return {
        name: convert_checkpoint(
            source, workdir / f"{name}-hf", to="hf", image_token_id=token_ids.get(name), progress=False
        ).path
        for name, source in sources.items()
    }


# ---- original -> -hf: numbers -------------------------------------------------------------------------------------

_CLEAN_PARITY_SCRIPT = """
import json, sys, torch
from safetensors.torch import load_file
from transformers import InternVLForConditionalGeneration
results = {}
for folder, reference in json.loads(sys.argv[1]):
    io = load_file(reference)
    real = io["attention_mask"].bool()
    for attn in ("eager", "sdpa"):
        model = InternVLForConditionalGeneration.from_pretrained(folder, attn_implementation=attn).eval()
        with torch.no_grad():
            logits = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"],
                           attention_mask=io["attention_mask"]).logits
        results[f"{folder} {attn}"] = (logits - io["logits"])[real].abs().max().item()
results["imported"] = sorted(name for name in sys.modules if name.startswith("transformers_internvl"))
print(json.dumps(results))
"""


@pytest.mark.slow
def test_to_hf_matches_the_original_implementation_without_this_package(converted):
    """transformers' own InternVLForConditionalGeneration, in a process that never imports this package, reproduces
    the original implementation's logits on the converted weights (eager and SDPA attention), for Qwen2, InternLM2
    (-> Llama) and Llama LLMs."""
    cases = [
        (str(converted[name]), str(MODELS / fixture / "io.safetensors"))
        for name, fixture in (("qwen2", "tiny-qwen2"), ("internlm2", "tiny-internlm2"), ("llama", "tiny-qwen2"))
    ]
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [sys.executable, "-c", _CLEAN_PARITY_SCRIPT, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environment, "HF_HUB_OFFLINE": "1"},
        cwd=converted["qwen2"],
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert results.pop("imported") == []
    assert len(results) == 6
    assert all(delta <= 1e-5 for delta in results.values()), results


def test_verify_detects_a_wrong_tensor(workdir, sources, converted):
    broken = workdir / "broken-hf"
    shutil.copytree(converted["qwen2"], broken)
    state_dict = load_file(broken / "model.safetensors")
    state_dict["multi_modal_projector.linear_2.bias"] += 0.1
    save_file(state_dict, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"verification failed: max\|Δlogits\|"):
        verify_conversion(sources["qwen2"], broken, "hf")


def test_hf_config_fields(converted):
    config = json.loads((converted["internlm2"] / "config.json").read_text())
    assert config["model_type"] == "internvl" and config["architectures"] == ["InternVLForConditionalGeneration"]
    assert config["text_config"]["model_type"] == "llama"
    assert config["tie_word_embeddings"] is False and config["text_config"]["tie_word_embeddings"] is False
    assert config["image_token_id"] == 997 and config["image_seq_length"] == 256
    assert config["vision_config"]["use_qk_norm"] is True and config["vision_config"]["norm_type"] == "rms_norm"
    assert config[ORIGINAL_RECORD_KEY]["llm_architectures"] == ["InternLM2ForCausalLM"]
    assert config[ORIGINAL_RECORD_KEY]["template"] == "internlm2-chat"
    tensors = load_file(converted["internlm2"] / "model.safetensors")
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in tensors
    assert not any("wqkv" in key or key.startswith("vision_model.") for key in tensors)


def test_select_layer_variants_match_the_original(workdir):
    """`select_layer` -2 and 1 become `vision_feature_layer`: same hidden-state indexing as the original."""
    outputs = load_file(FIXTURES / "original-variants" / "outputs.safetensors")
    io = load_file(MODELS / "tiny-qwen2" / "io.safetensors")
    from transformers import InternVLForConditionalGeneration

    for variant, select_layer in (("sl-2", -2), ("sl1", 1)):
        source = original_model_dir(workdir / f"qwen2-{variant}", "tiny-qwen2", None)
        config = json.loads((source / "config.json").read_text())
        config["select_layer"] = select_layer
        (source / "config.json").write_text(json.dumps(config))
        token_id = image_token_id("tiny-qwen2")
        result = convert_checkpoint(
            source, workdir / f"qwen2-{variant}-hf", "hf", image_token_id=token_id, progress=False
        )
        model = InternVLForConditionalGeneration.from_pretrained(result.path).eval()
        with torch.no_grad():
            logits = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits[:, -32:]
        assert (logits - outputs[f"tiny-qwen2-{variant}.logits_last32"]).abs().max().item() <= 1e-5


# ---- original -> -hf: processor, tokenizer, generation config -----------------------------------------------------


def _hf_processor_input_ids(folder: Path, image: Image.Image, text: str) -> tuple[list[int], int]:
    """What transformers' InternVLProcessor does with the converted files: chat template with an <IMG_CONTEXT>
    placeholder, GotOcr2 tiling (`crop_to_patches=True`), placeholder -> <img> + <IMG_CONTEXT> x (seq x tiles) +
    </img> (`InternVLProcessor.replace_image_token`). transformers 5.24 loads its InternVLProcessor only with
    torchvision (for the video processor), which the test environment lacks, so the processor's steps are replayed."""
    from transformers import AutoImageProcessor, AutoTokenizer

    image_processor = AutoImageProcessor.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert not type(tokenizer).__module__.startswith("transformers_internvl")
    assert not type(image_processor).__module__.startswith("transformers_internvl")
    image_seq_length = json.loads((folder / "processor_config.json").read_text())["image_seq_length"]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    prompt = tokenizer.apply_chat_template(
        messages,
        chat_template=(folder / "chat_template.jinja").read_text(),
        add_generation_prompt=True,
        tokenize=False,
    )
    pixels = image_processor(images=[image], crop_to_patches=True, return_tensors="pt")
    tiles = int(pixels["num_patches"][0])
    assert pixels["pixel_values"].shape[0] == tiles
    expansion = tokenizer.start_image_token + tokenizer.context_image_token * image_seq_length * tiles
    prompt = prompt.replace(tokenizer.context_image_token, expansion + tokenizer.end_image_token, 1)
    return tokenizer(prompt)["input_ids"], tiles


@pytest.mark.parametrize("name", ["qwen2", "internlm2-tok"])
@pytest.mark.parametrize("size", [(1000, 600), (300, 1200), (448, 448)])
def test_converted_processor_gives_the_same_input_ids_and_tiles(sources, converted, name, size):
    from transformers import AutoProcessor

    image = Image.new("RGB", size, (10, 200, 30))
    text = "Describe the image."
    processor = AutoProcessor.from_pretrained(sources[name])
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    ours = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    input_ids, tiles = _hf_processor_input_ids(converted[name], image, text)
    assert tiles == ours["pixel_values"].shape[0]
    assert input_ids == ours["input_ids"][0].tolist()


def test_converted_internlm2_tokenizer_matches_the_original_on_fuzz_strings(converted):
    """The plain `tokenizer.json` (no class of this package) against the original slow InternLM2Tokenizer's ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted["internlm2-tok"])
    assert type(tokenizer).__name__ == "TokenizersBackend"
    fuzz = json.loads((FIXTURES / "original-variants" / "internlm2_tokenizer_fuzz.json").read_text())
    expected = fuzz["folders"]["internlm2-dummy-prefix"]
    mismatches = [
        index
        for index, text in enumerate(fuzz["strings"])
        if tokenizer(text)["input_ids"] != expected[index]["input_ids"]
    ]
    assert mismatches == []


def test_generation_config_stops_at_the_chat_stop_token(converted):
    for name, stop in (("qwen2", "<|im_end|>"), ("internlm2-tok", "<|im_end|>")):
        from transformers import AutoTokenizer

        generation = json.loads((converted[name] / "generation_config.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(converted[name])
        eos = generation["eos_token_id"]  # llm eos, plus the stop token when it is another token (InternLM2: [2, 598])
        assert tokenizer.convert_tokens_to_ids(stop) in (eos if isinstance(eos, list) else [eos])


def test_image_processor_settings(converted):
    settings = json.loads((converted["qwen2"] / "preprocessor_config.json").read_text())
    assert settings["crop_to_patches"] is True
    assert (settings["min_patches"], settings["max_patches"]) == (1, 12)
    assert settings["size"] == {"height": 448, "width": 448}
    assert settings["resample"] == 3


# ---- -hf -> original ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen2", "internlm2", "internlm2-tok", "llama"])
def test_round_trip_is_bit_identical(workdir, sources, converted, name):
    back = convert_checkpoint(converted[name], workdir / f"{name}-back", to="original", progress=False).path
    before, after = load_file(sources[name] / "model.safetensors"), load_file(back / "model.safetensors")
    assert set(before) == set(after)
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype and torch.equal(after[key], tensor), key
    config = json.loads((back / "config.json").read_text())
    original = json.loads((sources[name] / "config.json").read_text())
    assert config["model_type"] == "internvl_chat"
    assert config["llm_config"]["architectures"] == original["llm_config"]["architectures"]
    for field in ("template", "ps_version", "select_layer", "max_dynamic_patch", "use_thumbnail", "downsample_ratio"):
        assert config[field] == original[field], field
    assert not (back / "chat_template.jinja").exists() and not (back / "preprocessor_config.json").exists()
    if name != "internlm2-tok":  # same weights as "internlm2"
        report = verify_conversion(back, converted[name], "hf")
        assert report["max_abs_logits_diff"] <= 1e-5 and report["greedy_tokens_match"]


def test_hf_without_record_stays_llama(workdir, converted):
    """A `-hf` folder that does not say it came from InternLM2 (e.g. made by another tool) stays Llama."""
    plain = workdir / "internlm2-hf-plain"
    shutil.copytree(converted["internlm2"], plain)
    config = json.loads((plain / "config.json").read_text())
    del config[ORIGINAL_RECORD_KEY]
    (plain / "config.json").write_text(json.dumps(config))
    back = convert_checkpoint(plain, workdir / "internlm2-plain-back", to="original", progress=False).path
    config = json.loads((back / "config.json").read_text())
    assert config["llm_config"]["architectures"] == ["LlamaForCausalLM"]
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in load_file(back / "model.safetensors")


def test_module_tree_names_are_accepted(workdir, sources, converted):
    """`-hf` weights saved with the in-memory names (`model.vision_tower.*`, `lm_head.*`) convert the same."""
    renamed = workdir / "qwen2-hf-module-names"
    shutil.copytree(converted["qwen2"], renamed)
    tensors = load_file(renamed / "model.safetensors")
    prefixes = {"vision_tower.": "model.vision_tower.", "multi_modal_projector.": "model.multi_modal_projector."}
    prefixes |= {"language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head."}
    out = {}
    for key, tensor in tensors.items():
        old = next(prefix for prefix in prefixes if key.startswith(prefix))
        out[prefixes[old] + key[len(old) :]] = tensor
    save_file(out, renamed / "model.safetensors", metadata={"format": "pt"})
    back = convert_checkpoint(renamed, workdir / "qwen2-module-back", to="original", progress=False).path
    before, after = load_file(sources["qwen2"] / "model.safetensors"), load_file(back / "model.safetensors")
    assert all(torch.equal(before[key], after[key]) for key in before) and set(before) == set(after)


# ---- streaming, sharding, dtype ---------------------------------------------------------------------------------------


def test_shards_index_and_dtype(workdir, sources):
    result = convert_checkpoint(
        sources["qwen2"], workdir / "qwen2-hf-sharded", to="hf", max_shard_size="300KB", dtype="bf16", progress=False
    )
    assert len(result.shards) > 1
    index = json.loads((result.path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == result.shards
    assert result.shards[0] == f"model-00001-of-{len(result.shards):05d}.safetensors"
    for shard in result.shards:
        assert (result.path / shard).stat().st_size <= 300_000 + 100_000  # one shard may exceed by a tensor
        assert all(t.dtype == torch.bfloat16 for t in load_file(result.path / shard).values())
    assert json.loads((result.path / "config.json").read_text())["dtype"] == "bfloat16"
    # sharded -hf -> original reads the index
    back = convert_checkpoint(result.path, workdir / "qwen2-sharded-back", to="original", progress=False)
    assert len(back.shards) == 1
    report = verify_conversion(sources["qwen2"], result.path, "hf", dtype=torch.bfloat16)
    assert report["passed"]


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("500kb") == 500_000
    with pytest.raises(ValueError, match="max shard size"):
        parse_size("five")


# ---- refusals and bad input --------------------------------------------------------------------------------------------


def _single_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{PROG}: error: ")
    return lines[0]


def _no_leftovers(dst: Path) -> None:
    assert not dst.exists()
    assert [path.name for path in dst.parent.iterdir() if path.name.startswith(f".{dst.name}.")] == []


def _sharded_source(workdir: Path, name: str) -> Path:
    source = original_model_dir(workdir / name, "tiny-qwen2", "qwen2-tiny")
    tensors = load_file(source / "model.safetensors")
    (source / "model.safetensors").unlink()
    keys = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for shard, shard_keys in halves.items():
        save_file({key: tensors[key] for key in shard_keys}, source / shard, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard_keys, shard)
    (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return source


def _missing_shard(source: Path) -> str:
    (source / "model-00002-of-00002.safetensors").unlink()
    return "shard model-00002-of-00002.safetensors named in model.safetensors.index.json is missing"


def _index_mismatch(source: Path) -> str:
    index = json.loads((source / "model.safetensors.index.json").read_text())
    key = sorted(index["weight_map"])[0]
    index["weight_map"][key] = "model-00002-of-00002.safetensors"
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    return "does not match the shards"


def _truncated_header(source: Path) -> str:
    path = source / "model-00001-of-00002.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    return "cannot read safetensors file"


def _unknown_architecture(source: Path) -> str:
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = "llava"
    (source / "config.json").write_text(json.dumps(config))
    return "unknown architecture"


def _unknown_llm(source: Path) -> str:
    config = json.loads((source / "config.json").read_text())
    config["llm_config"]["architectures"] = ["MysteryForCausalLM"]
    (source / "config.json").write_text(json.dumps(config))
    return "MysteryForCausalLM"


def _ps_version_v1(source: Path) -> str:
    config = json.loads((source / "config.json").read_text())
    config["ps_version"] = "v1"
    (source / "config.json").write_text(json.dumps(config))
    return "ps_version 'v1' has no -hf equivalent"


def _unknown_tensor(source: Path) -> str:
    tensors = load_file(source / "model-00001-of-00002.safetensors")
    tensors["extra_head.weight"] = torch.zeros(2)
    save_file(tensors, source / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    index = json.loads((source / "model.safetensors.index.json").read_text())
    index["weight_map"]["extra_head.weight"] = "model-00001-of-00002.safetensors"
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    return "unknown tensor 'extra_head.weight'"


def _missing_tensor(source: Path) -> str:
    index = json.loads((source / "model.safetensors.index.json").read_text())
    shard = "model-00001-of-00002.safetensors"
    tensors = load_file(source / shard)
    key = next(key for key in sorted(tensors) if key.startswith("mlp1."))
    del tensors[key], index["weight_map"][key]
    save_file(tensors, source / shard, metadata={"format": "pt"})
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    return "lacks 1 tensor(s) the model needs"


@pytest.mark.parametrize(
    "break_source",
    [
        _missing_shard,
        _index_mismatch,
        _truncated_header,
        _unknown_architecture,
        _unknown_llm,
        _ps_version_v1,
        _unknown_tensor,
        _missing_tensor,
    ],
)
def test_bad_input_is_one_error_line_and_no_destination(workdir, capsys, break_source):
    source = _sharded_source(workdir, f"bad-{break_source.__name__}")
    expected = break_source(source)
    dst = workdir / f"bad-{break_source.__name__}-out"
    assert main(["convert", str(source), str(dst), "--to", "hf", "--quiet"]) == 1
    assert expected in _single_error_line(capsys.readouterr().err)
    _no_leftovers(dst)


def test_sharded_source_converts(workdir, sources):
    source = _sharded_source(workdir, "good-sharded")
    result = convert_checkpoint(source, workdir / "good-sharded-hf", "hf", progress=False)
    report = verify_conversion(source, result.path, "hf")
    assert report["max_abs_logits_diff"] <= 1e-5


def test_existing_destination_needs_force(workdir, sources, capsys):
    dst = workdir / "exists"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    assert main(["convert", str(sources["qwen2"]), str(dst), "--to", "hf", "--quiet"]) == 1
    assert "already exists" in _single_error_line(capsys.readouterr().err)
    assert (dst / "keep.txt").exists()
    assert main(["convert", str(sources["qwen2"]), str(dst), "--to", "hf", "--quiet", "--force"]) == 0
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").exists()


def test_wrong_direction_is_refused(sources, converted, workdir, capsys):
    assert main(["convert", str(converted["qwen2"]), str(workdir / "wrong"), "--to", "hf", "--quiet"]) == 1
    assert "already in the 'hf' layout" in _single_error_line(capsys.readouterr().err)


def test_interrupted_run_leaves_no_destination(workdir, sources, monkeypatch):
    from transformers_internvl.conversion import streaming

    calls = []
    read = streaming.SourceReader.read

    def interrupt(self, name):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return read(self, name)

    monkeypatch.setattr(streaming.SourceReader, "read", interrupt)
    dst = workdir / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(sources["qwen2"], dst, "hf", progress=False)
    _no_leftovers(dst)


@pytest.mark.slow
def test_killed_run_leaves_no_destination(workdir, sources):
    """SIGTERM mid-run: the temporary folder is removed; SIGKILL: DST never appears (only the hidden temporary
    folder beside it can remain)."""
    script = (
        "import sys, time\n"
        "from transformers_internvl.conversion import streaming as c\n"
        "read = c.SourceReader.read\n"
        "def slow(self, name):\n"
        "    print('writing', flush=True); time.sleep(0.2); return read(self, name)\n"
        "c.SourceReader.read = slow\n"
        "from transformers_internvl.cli import main\n"
        "sys.exit(main(['convert', sys.argv[1], sys.argv[2], '--to', 'hf', '--quiet']))\n"
    )
    environment = {**os.environ, "PYTHONPATH": f"{SRC_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # Both runs start together (two fresh interpreters side by side, for wall time); each is signalled mid-run.
    runs = [
        (signal_number, workdir / name)
        for signal_number, name in ((signal.SIGTERM, "terminated"), (signal.SIGKILL, "killed"))
    ]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(sources["qwen2"]), str(dst)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for _, dst in runs
    ]
    try:
        for (signal_number, dst), process in zip(runs, processes):
            assert process.stdout.readline().strip() == "writing"
            time.sleep(0.3)
            process.send_signal(signal_number)
            process.wait(timeout=60)
            assert process.returncode != 0
            assert not dst.exists()
            if signal_number == signal.SIGTERM:
                _no_leftovers(dst)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


# ---- --merge-lora (PEFT adapter folders) ----------------------------------------------------------------------------


def test_merge_peft_lora_adapter(workdir, sources, capsys):
    """An adapter on the vision qkv, the projector and the LLM projections, merged while converting to -hf: the
    converted model equals the source with the adapter unmerged (PEFT), checked by --verify."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(sources["qwen2"]).eval()
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["qkv", "mlp1.1", "q_proj", "v_proj"], init_lora_weights=False
    )
    torch.manual_seed(0)
    peft_model = get_peft_model(base, config)
    adapter = workdir / "qwen2-adapter"
    peft_model.save_pretrained(adapter)
    dst = workdir / "qwen2-merged-hf"
    arguments = ["convert", str(sources["qwen2"]), str(dst), "--to", "hf", "--merge-lora", str(adapter), "--verify"]
    assert main([*arguments, "--quiet"]) == 0
    output = capsys.readouterr().out
    assert "greedy tokens match" in output
    merged = load_file(dst / "model.safetensors")
    original = load_file(sources["qwen2"] / "model.safetensors")
    key = "vision_model.encoder.layers.0.attn.qkv.weight"
    assert not torch.equal(merged["vision_tower.encoder.layer.0.attention.q_proj.weight"], original[key][:64])
    with pytest.raises(ConversionError, match="verification failed"):  # the adapter does change the outputs
        verify_conversion(sources["qwen2"], dst, "hf")


def test_merge_lora_refuses_a_non_finite_adapter(workdir, sources, capsys):
    """A NaN in an adapter factor would make the merged weights NaN: refused, naming the module, nothing written."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(sources["qwen2"]).eval()
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    for name, parameter in peft_model.named_parameters():
        if "lora_A" in name:
            with torch.no_grad():
                parameter[0, 0] = float("nan")
            break
    adapter = workdir / "nan-adapter"
    peft_model.save_pretrained(adapter)
    dst = workdir / "nan-merged"
    capsys.readouterr()  # the loading bars above
    arguments = ["convert", str(sources["qwen2"]), str(dst), "--to", "hf", "--merge-lora", str(adapter), "--quiet"]
    assert main(arguments) == 1
    assert "merging lora_A / lora_B gives" in _single_error_line(capsys.readouterr().err)
    _no_leftovers(dst)


def test_merge_lora_refuses_dora(workdir, sources, capsys):
    adapter = workdir / "dora-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "use_dora": True, "r": 2, "lora_alpha": 2})
    )
    dst = workdir / "dora-out"
    assert (
        main(["convert", str(sources["qwen2"]), str(dst), "--to", "hf", "--merge-lora", str(adapter), "--quiet"]) == 1
    )
    assert "use_dora=true is not supported" in _single_error_line(capsys.readouterr().err)
    _no_leftovers(dst)


def test_destination_that_is_or_holds_the_source_is_refused_even_with_force(tmp_path):
    parent = tmp_path / "parent"
    source = original_model_dir(parent / "src", "tiny-qwen2", "qwen2-tiny")
    (parent / "precious.txt").write_text("keep me")
    for dst in (source, parent, tmp_path):
        with pytest.raises(ConversionError, match="is the source folder .* or contains it"):
            convert_checkpoint(source, dst, to="hf", force=True, progress=False)
    assert (parent / "precious.txt").read_text() == "keep me"
    assert (source / "model.safetensors").is_file()


def test_destination_that_is_a_file_a_link_or_has_no_parent_is_refused(tmp_path):
    source = original_model_dir(tmp_path / "src", "tiny-qwen2", "qwen2-tiny")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for dst, message in (
        (a_file, "is not a folder"),
        (dangling, "is not a folder"),
        (a_file / "child", "that should hold the destination does not exist"),
    ):
        with pytest.raises(ConversionError, match=message):
            convert_checkpoint(source, dst, to="hf", force=True, progress=False)
    assert a_file.read_text() == "x" and dangling.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "dangling", "src"]


def test_cli_constants_agree_with_the_converter():
    from transformers_internvl.conversion import command, convert

    assert sorted(command.DTYPE_NAMES) == sorted(convert.DTYPES)
    assert command.DEFAULT_MAX_SHARD_SIZE == convert.DEFAULT_MAX_SHARD_SIZE


def test_tensors_that_do_not_fit_the_config_are_refused(tmp_path):
    """A source whose tensor shapes disagree with its own config (an `intermediate_size` twice the weights') is
    refused with the tensor and both shapes, and no DST is left (before: exit 0 and an unloadable output)."""
    source = original_model_dir(tmp_path / "src", "tiny-qwen2", "qwen2-tiny")
    config = json.loads((source / "config.json").read_text())
    config["llm_config"]["intermediate_size"] = config["llm_config"]["intermediate_size"] * 2
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ConversionError, match=r"mlp\..*: the checkpoint gives shape \(64, 128\), the config implies \(64, 256\)"
    ):
        convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False)
    assert not (tmp_path / "hf").exists()
