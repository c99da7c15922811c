"""LoRA fine-tuning of an InternVL 2.5 checkpoint on data in the original InternVL format, with HF `Trainer`.

    python examples/finetune_lora.py --model OpenGVLab/InternVL2_5-1B --data train.jsonl --root images/ \\
        --output-dir out --max-steps 1000 --lora-rank 16 --packing --gradient-checkpointing --bf16

`--data` is a JSONL file (rows with `conversations` + `image` / `video`, or `messages`) or an original meta file
(`*.json`: `{name: {root, annotation, repeat_time, max_dynamic_patch, data_augment}}`). Without `--data`, a small
built-in demo set is used (the test of this script trains the tiny fixture model on it). The adapter is saved under
`--output-dir` with the original module names (`training.adapters.save_adapter_original_layout`; `--adapter-layout
peft` keeps PEFT's own names), together with `trainer_state.json` (the logged losses).

    --trainer trl         TRL's SFTTrainer with this package's dataset and collator (`training.sft`)
    --qlora               4-bit NF4 LLM (bitsandbytes, CUDA only); vision tower, projector and head stay in bf16
    torchrun --nproc_per_node 2 examples/finetune_lora.py ...   DDP (gloo on CPU, NCCL on GPU); the batch size is
                          per process, so 2 x 2 equals one process with 4 (`--train-sampling sequential` to compare)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer, TrainingArguments

import transformers_internvl  # noqa: F401  (registers the InternVL classes)
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.processing.tokenizer_loading import VOCABULARY_FILES
from transformers_internvl.training.adapters import save_adapter_original_layout
from transformers_internvl.training.collator import InternVLDataCollator, InternVLPackingCollator
from transformers_internvl.training.data import InternVLSupervisedDataset
from transformers_internvl.training.stages import set_trainable
from transformers_internvl.training.trainer import InternVLTrainer


def internvl_sft_config(**kwargs):
    from transformers_internvl.training.sft import internvl_sft_config as make

    return make(**kwargs)


def sft_trainer(*args, **kwargs):
    from transformers_internvl.training.sft import sft_trainer as make

    return make(*args, **kwargs)


def demo_rows(root: str) -> list[dict]:
    """Four fixed samples (two with an image, two text-only) written under `root`."""
    rng = np.random.default_rng(0)
    for name in ("red.png", "blue.png"):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(os.path.join(root, name))
    human, gpt = "human", "gpt"
    return [
        {"image": "red.png", "conversations": [{"from": human, "value": "Name it."}, {"from": gpt, "value": "red"}]},
        {"image": "blue.png", "conversations": [{"from": human, "value": "Name it."}, {"from": gpt, "value": "blue"}]},
        {"conversations": [{"from": human, "value": "Count to three."}, {"from": gpt, "value": "one two three"}]},
        {"conversations": [{"from": human, "value": "Say hello."}, {"from": gpt, "value": "hello world"}]},
    ]


def qlora_kwargs(qlora: bool) -> dict:
    """`from_pretrained` arguments of the QLoRA recipe: the LLM's linear layers in 4-bit NF4 (double quantization,
    bf16 compute); InternViT, the projector `mlp1` and the head are not quantized and stay in bf16."""
    if not qlora:
        return {}
    if not torch.cuda.is_available():
        raise SystemExit("--qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); none is available.")
    from transformers import BitsAndBytesConfig

    quantization_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["vision_model", "mlp1", "lm_head"],
    )
    # one whole model per process (also under torchrun: its local rank's GPU)
    return {"quantization_config": quantization_config, "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def training_image_processor(config) -> InternVLImageProcessor:
    """The checkpoint's tiling settings (`config.json`: tile size, `dynamic_image_size`, `use_thumbnail`,
    `min_dynamic_patch`); the per-image tile budget comes from `--max-dynamic-patch` / the meta file."""
    return InternVLImageProcessor(
        image_size=config.vision_image_size,
        dynamic_image_size=config.dynamic_image_size,
        use_thumbnail=config.use_thumbnail,
        min_dynamic_patch=config.min_dynamic_patch,
        max_dynamic_patch=max(config.min_dynamic_patch, config.max_dynamic_patch),
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path (default: --model)")
    parser.add_argument("--data", default=None, help="JSONL file or meta file; default: built-in demo")
    parser.add_argument("--root", default="", help="image root of a JSONL file")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=4e-5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--vision-lora-rank", type=int, default=0)
    parser.add_argument("--max-dynamic-patch", type=int, default=6)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--min-num-frame", type=int, default=8, help="fewest frames per training video (original: 8)")
    parser.add_argument("--max-num-frame", type=int, default=32, help="most frames per training video (original: 32)")
    parser.add_argument(
        "--sampling-method", default="rand", help="frame positions: rand, middle or fps<rate> (original: rand)"
    )
    parser.add_argument("--packing", action="store_true", help="pack the samples of a batch into rows")
    parser.add_argument("--max-tokens", type=int, default=16384, help="token budget of a packed row")
    parser.add_argument("--loss-reduction", default="token", choices=("token", "sample", "square"))
    parser.add_argument(
        "--loss-reduction-all-gather",
        action="store_true",
        help="sample / square: average the weight sum over processes (original --loss_reduction_all_gather)",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-to", default="none")
    parser.add_argument("--disable-tqdm", action="store_true")
    parser.add_argument("--trainer", default="hf", choices=("hf", "trl"), help="transformers Trainer or TRL SFTTrainer")
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument(
        "--drop-path-rate",
        type=float,
        default=0.0,
        help="InternViT drop path while training (original LoRA scripts: 0.0, whatever the checkpoint's config says)",
    )
    parser.add_argument(
        "--train-sampling",
        default="random",
        choices=("random", "sequential", "group_by_length"),
        help="group_by_length: batches of rows of similar estimated length (original --group_by_length True)",
    )
    parser.add_argument("--adapter-layout", default="original", choices=("original", "peft"))
    parser.add_argument("--qlora", action="store_true", help="4-bit NF4 LLM with bitsandbytes (needs CUDA)")
    args = parser.parse_args(argv)
    for option in ("max_length", "max_tokens"):  # (a clamped --max-length would otherwise be blamed for --max-tokens)
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1 (tokens), got {getattr(args, option)}")
    if os.path.isdir(args.model):
        # The adapter records this as `base_model_name_or_path`: a relative path would load only from this directory.
        args.model = os.path.abspath(args.model)
    tokenizer_dir = args.tokenizer or args.model
    if os.path.isdir(tokenizer_dir) and not any(
        os.path.isfile(os.path.join(tokenizer_dir, name)) for name in VOCABULARY_FILES
    ):
        # AutoTokenizer's own error for such a folder ("Couldn't instantiate the backend tokenizer ...") names no file
        option = "--tokenizer" if args.tokenizer else "--model"
        parser.error(
            f"{option} {tokenizer_dir} holds no tokenizer vocabulary (one of {', '.join(VOCABULARY_FILES)}); "
            "pass --tokenizer DIR with the tokenizer files"
        )
    return args


def main(argv=None) -> InternVLTrainer:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    dtype = torch.bfloat16 if args.bf16 or args.qlora else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(
        args.model, image_token_id=image_token_id, dtype=dtype, **qlora_kwargs(args.qlora)
    )
    config = model.config
    image_processor = training_image_processor(config)
    if args.packing and args.max_length > args.max_tokens:
        # As the original's PackedDataset (`ds.max_tokens` clamped to `max_packed_tokens`, with a warning): a sample
        # longer than a packed row would otherwise stop training in the collator; it is skipped with the others.
        warnings.warn(
            f"--max-length {args.max_length} is above --max-tokens {args.max_tokens}: samples longer than "
            f"{args.max_tokens} tokens are skipped (dataset max_length = {args.max_tokens}).",
            stacklevel=1,
        )
        args.max_length = args.max_tokens
    common = dict(
        tokenizer=tokenizer,
        image_processor=image_processor,
        template=config.template,
        num_image_token=config.num_image_token,
        max_length=args.max_length,
        min_num_frame=args.min_num_frame,
        max_num_frame=args.max_num_frame,
        sampling_method=args.sampling_method,
    )
    scratch = tempfile.mkdtemp(prefix="internvl-demo-")
    if args.data is None:
        dataset = InternVLSupervisedDataset(demo_rows(scratch), root=scratch, max_dynamic_patch=1, **common)
    elif args.data.endswith(".json"):
        dataset = InternVLSupervisedDataset.from_meta(args.data, max_dynamic_patch=args.max_dynamic_patch, **common)
    else:
        dataset = InternVLSupervisedDataset.from_jsonl(
            args.data, root=args.root, max_dynamic_patch=args.max_dynamic_patch, **common
        )

    model = set_trainable(
        model,
        "llm_lora",
        lora_rank=args.lora_rank,
        vision_lora_rank=args.vision_lora_rank,
        gradient_checkpointing=args.gradient_checkpointing or args.qlora,
        lora_dropout=args.lora_dropout,
        drop_path_rate=args.drop_path_rate,
    )
    if args.packing:
        collator = InternVLPackingCollator(tokenizer.pad_token_id, args.max_tokens, loss_reduction=args.loss_reduction)
    else:
        collator = InternVLDataCollator(tokenizer.pad_token_id, loss_reduction=args.loss_reduction)
    training_args = (internvl_sft_config if args.trainer == "trl" else TrainingArguments)(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=args.report_to,
        remove_unused_columns=False,  # the collator needs pixel_values / image_flags
        bf16=args.bf16 or args.qlora,
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=args.disable_tqdm,
        train_sampling_strategy=args.train_sampling,
        use_cpu=not torch.cuda.is_available(),  # also makes accelerate run DDP over gloo under torchrun on CPU
    )
    all_gather = {"loss_reduction_all_gather": args.loss_reduction_all_gather}
    if args.trainer == "trl":
        trainer = sft_trainer(model, training_args, dataset, collator, processing_class=tokenizer, **all_gather)
    else:
        trainer = InternVLTrainer(
            model=model, args=training_args, train_dataset=dataset, data_collator=collator, **all_gather
        )
    trainer.train()
    if trainer.is_world_process_zero():
        if args.adapter_layout == "original":
            save_adapter_original_layout(model, args.output_dir)
        else:
            model.save_pretrained(args.output_dir)
        trainer.state.save_to_json(os.path.join(args.output_dir, "trainer_state.json"))
    if len(dataset.skipped):
        summary = json.dumps(dataset.skipped.counts())
        trainer.log({"skipped_samples": len(dataset.skipped)})
        print(f"skipped {len(dataset.skipped)} bad samples: {summary}")
    return trainer


def _exit_distributed_run() -> None:
    """Under torchrun, end the process once its work is written, without running object destructors.

    Freeing DDP's reducer (and with it the gloo process group) joins gloo's worker threads while holding the GIL; a
    worker still freeing a finished collective needs the GIL, so the process either hangs there (seen with and
    without `destroy_process_group()`) or aborts at interpreter teardown ("terminate called without an active
    exception", SIGABRT), after training succeeded. Each rank has finished its writes when `main` returns (rank 0
    saves before returning), so output streams are flushed and the process exits with status 0.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
    _exit_distributed_run()
