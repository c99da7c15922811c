"""Benchmark InternVL preprocessing: image tiling against the original recipe and transformers, video sampling.

Image part: one 1920x1080 image (deterministic synthetic content) tiled with n_max 12 (4x2 grid + thumbnail = 9 tiles)
by

* the original recipe: `dynamic_preprocess` (PIL resize, per-tile crops, thumbnail) and, per tile, torchvision
  `Resize(448, BICUBIC)` (a no-op on 448 tiles) + `ToTensor()` + `Normalize(ImageNet)`, then `torch.stack`. When
  torchvision cannot be imported (a CUDA torchvision beside a CPU torch is imported without its C ops' meta
  registrations, which the timed transforms do not use), an exact transcription of that recipe in PIL + torch is timed instead (per tile:
  `np.array` -> `torch.from_numpy` -> permute -> `.float().div(255)` -> `.sub_(mean).div_(std)`, which is what
  `ToTensor` / `Normalize` do; the no-op resize is skipped), and the table says so;
* `InternVLImageProcessor` (default threads, and `num_workers=1`);
* transformers' own InternVL image processors (GotOcr2, PIL backend, and the torchvision backend when available)
  with `crop_to_patches=True, max_patches=12`, 448 px, ImageNet mean/std.

Each row gives the minimum and median wall times, the ratios to the original recipe's, and max |pixel difference| to it.

Video part: a 10-minute synthetic video (64x64, 5 fps, keyframe every 50 frames; `--video-size/--video-fps/--gop`
change it) sampled to 8 frames by `read_video_frames` (seek + decode only what the frames need), against decoding
every frame of it with PyAV.

Run: `python benchmarks/bench_preprocess.py [--repeats 20] [--torch-threads N] [--skip-video]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image


def _import_torchvision() -> str:
    """Import torchvision if it is installed, before transformers looks for it; returns a note for the row labels.

    A CUDA torchvision wheel beside a CPU torch (this machine's package index) fails at import while registering its
    C ops (`operator torchvision::nms does not exist`), and transformers then fails to import too. The code timed here
    (the original's `Resize` on PIL, `ToTensor`, `Normalize`; transformers' torchvision image backend) needs none of
    those ops, so the import is retried without the C ops' meta registrations."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return ""
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401

        return ", its C ops not loaded (not used)"
    return ""


_TORCHVISION_NOTE = _import_torchvision()  # before transformers (imported below) looks for torchvision

from transformers_internvl import InternVLImageProcessor, plan_tiles  # noqa: E402
from transformers_internvl.processing.image_processing_internvl import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from transformers_internvl.processing.tiling import candidate_grids  # noqa: E402


def synthetic_image(width: int = 1920, height: int = 1080, seed: int = 0) -> Image.Image:
    """Gradients + noise + shapes: no flat regions, so no resize shortcut applies."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    noise = rng.normal(0, 25, (height, width, 3))
    image = np.clip(base + noise, 0, 255).astype(np.uint8)
    image[height // 4 : height // 2, width // 3 : width // 2] = (240, 30, 30)
    return Image.fromarray(image, mode="RGB")


# ---------------------------------------------------------------------------------------------------------------------
# The original recipe (internvl_chat/internvl/train/dataset.py), transcribed
# ---------------------------------------------------------------------------------------------------------------------


def original_dynamic_preprocess(image: Image.Image, max_num: int = 12, image_size: int = 448) -> list[Image.Image]:
    width, height = image.size
    aspect_ratio = width / height
    best_diff, best = float("inf"), (1, 1)
    for cols, rows in candidate_grids(1, max_num):  # the original's candidate order
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    target_w, target_h = image_size * best[0], image_size * best[1]
    resized = image.resize((target_w, target_h))
    tiles = []
    for i in range(best[0] * best[1]):
        box = (
            (i % (target_w // image_size)) * image_size,
            (i // (target_w // image_size)) * image_size,
            ((i % (target_w // image_size)) + 1) * image_size,
            ((i // (target_w // image_size)) + 1) * image_size,
        )
        tiles.append(resized.crop(box))
    if len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def make_original_recipe() -> tuple[Callable[[Image.Image], torch.Tensor], str]:
    try:
        import torchvision
        import torchvision.transforms as T
        from torchvision.transforms.functional import InterpolationMode

        transform = T.Compose(
            [
                T.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
                T.Resize((448, 448), interpolation=InterpolationMode.BICUBIC),
                T.ToTensor(),
                T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ]
        )

        def recipe(image: Image.Image) -> torch.Tensor:
            return torch.stack([transform(tile) for tile in original_dynamic_preprocess(image)])

        return recipe, f"original recipe (PIL + torchvision {torchvision.__version__}{_TORCHVISION_NOTE})"
    except (ImportError, RuntimeError, AttributeError, OSError):  # torchvision missing or broken beside this torch
        mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
        std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]

        def to_tensor_normalize(tile: Image.Image) -> torch.Tensor:
            # torchvision ToTensor on a PIL RGB image, then Normalize (the 448 -> 448 Resize is a no-op).
            array = np.array(tile, copy=True)
            tensor = torch.from_numpy(array).view(tile.size[1], tile.size[0], 3).permute(2, 0, 1).contiguous()
            tensor = tensor.to(dtype=torch.float32).div(255)
            return tensor.sub_(mean).div_(std)

        def recipe(image: Image.Image) -> torch.Tensor:
            return torch.stack([to_tensor_normalize(tile) for tile in original_dynamic_preprocess(image)])

        return recipe, "original recipe, PIL + torch transcription (torchvision not importable)"


def transformers_processors() -> list[tuple[str, Callable[[Image.Image], torch.Tensor]]]:
    rows = []
    common = {
        "crop_to_patches": True,
        "min_patches": 1,
        "max_patches": 12,
        "size": {"height": 448, "width": 448},
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    }
    try:
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        pil_processor = GotOcr2ImageProcessorPil(**common)
        rows.append(
            (
                GOT_OCR2_PIL_ROW,
                lambda image: pil_processor(image, return_tensors="pt")["pixel_values"],
            )
        )
    except (ImportError, RuntimeError, AttributeError, OSError, ValueError) as error:  # informational
        print(f"(transformers PIL InternVL/GotOcr2 processor unavailable: {error})")
    try:
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessor

            torch_processor = GotOcr2ImageProcessor(**common)
            rows.append(
                (
                    "transformers GotOcr2ImageProcessor (torchvision)",
                    lambda image: torch_processor(image, return_tensors="pt")["pixel_values"],
                )
            )
        else:
            print("(transformers torchvision backend not available: torchvision is not importable)")
    except (ImportError, RuntimeError, AttributeError, OSError, ValueError) as error:  # informational
        print(f"(transformers torchvision InternVL/GotOcr2 processor unavailable: {error})")
    return rows


GOT_OCR2_PIL_ROW = "transformers GotOcr2ImageProcessorPil"


def median_ms(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up (thread pools, lookup tables, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_image(repeats: int, width: int, height: int, max_tiles: int) -> None:
    image = synthetic_image(width, height)
    plan = plan_tiles(width, height, max_tiles)
    recipe, recipe_name = make_original_recipe()
    reference = recipe(image)
    rows: list[tuple[str, Callable[[Image.Image], torch.Tensor]]] = [(recipe_name, recipe)]
    ours_default = InternVLImageProcessor(max_dynamic_patch=max_tiles)
    ours_single = InternVLImageProcessor(max_dynamic_patch=max_tiles, num_workers=1)
    rows.append(
        (
            f"InternVLImageProcessor (default: num_workers = torch threads = {torch.get_num_threads()})",
            lambda img: ours_default(images=img, return_tensors="pt")["pixel_values"],
        )
    )
    rows.append(
        (
            "InternVLImageProcessor (num_workers=1)",
            lambda img: ours_single(images=img, return_tensors="pt")["pixel_values"],
        )
    )
    rows.extend(transformers_processors())

    print(
        f"\nImage: {width}x{height}, max_dynamic_patch {max_tiles} -> grid {plan.grid[0]}x{plan.grid[1]}, "
        f"{plan.num_tiles} tiles; min / median of {repeats} runs"
    )
    outputs = [function(image) for _, function in rows]  # warm-up and outputs for the pixel comparison
    # Timing in blocks, rows alternating between rounds: load changes on the machine hit all rows alike, and each block
    # starts with an untimed call, so threads left spinning by the previous row (OpenMP) do not count against this one.
    times: list[list[float]] = [[] for _ in rows]
    rounds = 3
    for _ in range(rounds):
        for index, (_, function) in enumerate(rows):
            function(image)
            for _ in range(max(1, repeats // rounds)):
                start = time.perf_counter()
                function(image)
                times[index].append((time.perf_counter() - start) * 1e3)
    print(
        "| preprocessing | ms min / median | original / this (min) | original / this (median) "
        "| GotOcr2 PIL / this (min, median) | max abs diff vs original | identical |"
    )
    print("|---|---:|---:|---:|---:|---:|:---:|")
    base_min, base_median = min(times[0]), statistics.median(times[0])
    pil_index = next((i for i, (name, _) in enumerate(rows) if name == GOT_OCR2_PIL_ROW), None)
    for (name, _), output, row_times in zip(rows, outputs, times):
        low, ms = min(row_times), statistics.median(row_times)
        if pil_index is None:
            pil_text = "-"
        else:
            pil_text = f"{min(times[pil_index]) / low:.2f}x, {statistics.median(times[pil_index]) / ms:.2f}x"
        if output.shape == reference.shape:
            diff_text = f"{(output - reference).abs().max().item():.2e}"
            same = "yes" if torch.equal(output, reference) else "no"
        else:
            diff_text, same = f"shape {tuple(output.shape)}", "no"
        print(
            f"| {name} | {low:.1f} / {ms:.1f} | {base_min / low:.2f}x | {base_median / ms:.2f}x | {pil_text} "
            f"| {diff_text} | {same} |"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------------------------------


def write_video(path: Path, seconds: int, fps: int, side: int, gop: int) -> int:
    import av

    rng = np.random.default_rng(0)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width = stream.height = side
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = gop
    stream.options = {"preset": "ultrafast"}
    texture = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    count = seconds * fps
    for index in range(count):
        frame = np.roll(texture, index, axis=1)
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return count


def decode_everything(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def bench_video(repeats: int, side: int, fps: int, gop: int, minutes: float, num_segments: int) -> None:
    from transformers_internvl.processing.video_processing_internvl import read_video_frames

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.mp4"
        start = time.perf_counter()
        count = write_video(path, int(minutes * 60), fps, side, gop)
        written_s = time.perf_counter() - start
        sampled = read_video_frames(path, num_segments=num_segments)
        full_ms = median_ms(lambda: decode_everything(path), max(3, repeats // 4))
        sampled_ms = median_ms(lambda: read_video_frames(path, num_segments=num_segments), repeats)
    print(
        f"\nVideo: {minutes:g} min, {side}x{side}, {fps} fps, keyframe every {gop} frames ({count} frames, "
        f"written in {written_s:.1f} s); {num_segments} frames sampled; median times"
    )
    print("| decoding | frames decoded | ms |")
    print("|---|---:|---:|")
    print(f"| every frame (PyAV decode loop) | {count} | {full_ms:.1f} |")
    print(
        f"| read_video_frames, {num_segments} sampled frames (seek + decode) | {sampled.num_decoded} | {sampled_ms:.1f} |"
    )
    print(
        f"decode-time ratio full / sampled: {full_ms / sampled_ms:.1f}x; frames decoded {count / sampled.num_decoded:.1f}x fewer"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=_positive, default=20)
    parser.add_argument(
        "--torch-threads", type=_positive, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument("--width", type=_positive, default=1920)
    parser.add_argument("--height", type=_positive, default=1080)
    parser.add_argument("--max-tiles", type=_positive, default=12)
    parser.add_argument("--skip-video", action="store_true")
    parser.add_argument("--video-size", type=_positive, default=64)
    parser.add_argument("--video-fps", type=_positive, default=5)
    parser.add_argument("--gop", type=_positive, default=50)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--num-segments", type=_positive, default=8)
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    print(
        f"{platform.processor() or platform.machine()}, {cpus} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Pillow {PIL.__version__}, numpy {np.__version__}"
    )
    bench_image(args.repeats, args.width, args.height, args.max_tiles)
    if not args.skip_video:
        bench_video(args.repeats, args.video_size, args.video_fps, args.gop, args.minutes, args.num_segments)


if __name__ == "__main__":
    main()
