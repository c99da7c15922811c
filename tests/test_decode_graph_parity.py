"""Compiled static-cache decoding does no more work than transformers' own InternVL port (issue 13, GPU row "static +
compile decode"): the graph `torch.compile` captures for one decoding step of this package's model holds no operation
that the port's graph for the same checkpoint (converted to the `-hf` layout) lacks, and no more of any.

This guards the kind of fault the first GPU run found: a data-dependent input check inside every compiled decoding
step (2,076 against 2,480 tokens/s at batch 8 on an H200). A recording backend captures the graphs, so nothing is
compiled to machine code and the test runs on CPU in seconds.
"""

from __future__ import annotations

import collections

import pytest
import torch
from helpers import QWEN2_IMAGE_TOKEN_ID, load_model, original_model_dir
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


@pytest.mark.parametrize("batch", [1, 3])
def test_compiled_decode_step_does_no_more_than_the_port(tmp_path, batch):
    source = original_model_dir(tmp_path / "original")
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    ours = load_model("tiny-qwen2").eval()
    port = InternVLForConditionalGeneration.from_pretrained(hf).eval()
    input_ids = torch.randint(0, 900, (batch, 12), generator=torch.Generator().manual_seed(batch))
    assert not (input_ids == QWEN2_IMAGE_TOKEN_ID).any()
    our_ops, our_tokens = _decode_graph_ops(ours, input_ids)
    port_ops, port_tokens = _decode_graph_ops(port, input_ids)
    assert torch.equal(our_tokens, port_tokens)
    extra = our_ops - port_ops
    assert not extra, f"operations in our decoding step beyond the port's: {dict(extra)}"
    assert sum(our_ops.values()) > 20  # a real LLM step was captured (embedding, layers, norm, head)
