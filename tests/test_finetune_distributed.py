"""`examples/finetune_lora.py` under `torchrun`: two gloo DDP processes on CPU equal one process on the same global
batch (losses, gradient norms, trained adapter)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import QWEN2_DIR, QWEN2_TOKENIZER
from safetensors.torch import load_file

pytest.importorskip("peft")
ROOT = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], output_dir: Path, batch_size: int) -> tuple[list[tuple[float, float]], dict]:
    args = [
        "--model", str(QWEN2_DIR),
        "--tokenizer", str(QWEN2_TOKENIZER),
        "--output-dir", str(output_dir),
        "--max-steps", "2",
        "--lora-rank", "4",
        "--learning-rate", "1e-2",
        "--lora-dropout", "0",  # dropout draws differ between one and two processes
        "--train-sampling", "sequential",  # the same global batch: samples 0-3 (one process) = 0-1 | 2-3
        "--batch-size", str(batch_size),
        "--disable-tqdm",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    attempts = 2 if command[0] == "torchrun" else 1
    failures = []
    for _ in range(attempts):
        # torchrun only: one retry on a fresh port, against failures outside the DDP numerics checked here (port
        # races; before the example's `_exit_distributed_run`, gloo teardown aborts and hangs after training
        # succeeded). Both stderr tails are shown if both attempts fail.
        launch = [*command[:-1], str(_free_port())] if command[0] == "torchrun" else command  # port: last
        result = subprocess.run(
            [*launch, str(ROOT / "examples" / "finetune_lora.py"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode == 0:
            break
        failures.append(result.stderr[-3000:])
    assert result.returncode == 0, "\n--- next attempt ---\n".join(failures)
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    steps = [(entry["loss"], entry["grad_norm"]) for entry in history if "loss" in entry]
    return steps, load_file(output_dir / "adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_gloo_ddp_processes_equal_one_process(tmp_path):
    torchrun = ["torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    # The two runs are independent (own output folder, one thread per process): run side by side to save wall time.
    with ThreadPoolExecutor(2) as pool:
        one = pool.submit(_run, [sys.executable], tmp_path / "one", batch_size=4)
        two = pool.submit(_run, torchrun, tmp_path / "two", batch_size=2)
        (one_steps, one_adapter), (two_steps, two_adapter) = one.result(), two.result()

    assert len(one_steps) == len(two_steps) == 2
    for (loss_1, grad_1), (loss_2, grad_2) in zip(one_steps, two_steps):
        # token averaging over the global batch: the two halves have 7 and 16 answer tokens, so a per-process
        # mean (what DDP gives without the global token count) would be far off
        assert loss_2 == pytest.approx(loss_1, rel=1e-5, abs=1e-5)
        assert grad_2 == pytest.approx(grad_1, rel=1e-5, abs=1e-6)
    assert one_adapter.keys() == two_adapter.keys()
    assert any(k.startswith("base_model.model.language_model.model.layers.") for k in one_adapter)
    for key, value in one_adapter.items():
        # two Adam steps from identical gradients; float32 all-reduce order only
        assert (value - two_adapter[key]).abs().max().item() <= 1e-5, key
