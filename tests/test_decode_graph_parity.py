"""Decoding does no more work than transformers' own InternVL port (issue 13: decode b1/b8, eager and with static
cache + compile), for the same checkpoint (converted to the `-hf` layout for the port):

- eager: the aten operations dispatched by four decoding steps are the port's, operation for operation;
- compiled: the graph `torch.compile` captures for one decoding step holds no operation the port's graph lacks, and
  no more of any.

This guards the kind of fault the first GPU run found: a data-dependent input check inside every compiled decoding
step (2,076 against 2,480 tokens/s at batch 8 on an H200). A recording backend captures the graphs, so nothing is
compiled to machine code and the test runs on CPU in seconds.
"""

from __future__ import annotations

import collections

import pytest
import torch
from helpers import QWEN2_IMAGE_TOKEN_ID, load_model, original_model_dir
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import CompileConfig, InternVLForConditionalGeneration

from transformers_internvl.conversion.convert import convert_checkpoint


def _decode_graph_ops(model, input_ids: torch.Tensor) -> tuple[collections.Counter, torch.Tensor]:
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    config = CompileConfig(fullgraph=True, backend=record)
    config.mode = None  # a mode is for inductor; a plain backend takes none
    config._compile_all_devices = True  # transformers compiles on accelerators only by default
    torch._dynamo.reset()
    tokens = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=False,
        cache_implementation="static",
        compile_config=config,
    )
    assert len(graphs) == 1, f"expected one decoding graph, got {len(graphs)} (graph breaks or recompiles)"
    ops = collections.Counter(
        str(node.target).split(" at 0x")[0]
        for node in graphs[0].graph.nodes
        if node.op in ("call_function", "call_method", "call_module")
    )
    return ops, tokens


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _models(tmp_path):
    source = original_model_dir(tmp_path / "original")
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    return load_model("tiny-qwen2").eval(), InternVLForConditionalGeneration.from_pretrained(hf).eval()


def _decode_step_ops(model, input_ids: torch.Tensor) -> collections.Counter:
    """aten operations of decoding steps 2-5: those of a 5-token generate minus those of a 1-token one."""
    counts = []
    for new_tokens in (1, 5):
        with torch.no_grad(), _CountOps() as counter:
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            )
        counts.append(counter.ops)
    return counts[1] - counts[0]


@pytest.mark.parametrize("batch", [1, 3])
def test_eager_decode_steps_dispatch_the_ports_operations(tmp_path, batch):
    ours, port = _models(tmp_path)
    assert ours.generation_config.eos_token_id == port.generation_config.eos_token_id  # same stopping work
    input_ids = torch.randint(0, 900, (batch, 12), generator=torch.Generator().manual_seed(batch))
    our_ops, port_ops = _decode_step_ops(ours, input_ids), _decode_step_ops(port, input_ids)
    assert our_ops == port_ops, f"ours - port: {dict(our_ops - port_ops)}; port - ours: {dict(port_ops - our_ops)}"
    assert sum(our_ops.values()) > 100  # four real LLM steps were counted


@pytest.mark.parametrize("batch", [1, 3])
def test_compiled_decode_step_does_no_more_than_the_port(tmp_path, batch):
    ours, port = _models(tmp_path)
    input_ids = torch.randint(0, 900, (batch, 12), generator=torch.Generator().manual_seed(batch))
    assert not (input_ids == QWEN2_IMAGE_TOKEN_ID).any()
    our_ops, our_tokens = _decode_graph_ops(ours, input_ids)
    port_ops, port_tokens = _decode_graph_ops(port, input_ids)
    assert torch.equal(our_tokens, port_tokens)
    extra = our_ops - port_ops
    assert not extra, f"operations in our decoding step beyond the port's: {dict(extra)}"
    assert sum(our_ops.values()) > 20  # a real LLM step was captured (embedding, layers, norm, head)
