"""engine.runtime.cuda_graph: which calls replay the captured graph, what they return, and (with
``-m cuda`` on an NVIDIA GPU) a real captured forward pass against the eager one.

On the CPU the graph is a stand-in that records the call and, on replay, runs it again and writes
the result into the static output in place, as a replayed CUDA graph does."""

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from engine.runtime.cuda_graph import CudaGraphModule, copy_output

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def write_into(static, fresh):
    if isinstance(static, torch.Tensor):
        static.copy_(fresh)
    else:
        for key in static:
            write_into(static[key], fresh[key])


class StandInGraph:
    def __init__(self, call):
        self.call, self.replays = call, 0
        self.output = call()

    def replay(self):
        self.replays += 1
        write_into(self.output, self.call())


def stand_in_capture(call):
    graph = StandInGraph(call)
    return graph, graph.output


class Encoder(nn.Module):
    """Called like a Hugging Face encoder: keyword tensors in, a ModelOutput out."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.eager_calls = 0

    def forward(self, features, mask):
        self.eager_calls += 1
        return BaseModelOutput(last_hidden_state=self.linear(features) * mask.unsqueeze(-1))


def example(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(batch, 5, 4, generator=generator), "mask": torch.ones(batch, 5)}


def test_a_call_shaped_like_the_example_replays_and_returns_a_copy():
    model = Encoder()
    graphed = CudaGraphModule(model, example(), graph_capture=stand_in_capture)
    inputs = example(seed=1)
    inputs["mask"][0, 3:] = 0
    calls_before = model.eager_calls
    got = graphed(**inputs)
    assert graphed.graph.replays == 1
    assert torch.equal(got.last_hidden_state, model(**inputs).last_hidden_state)
    got.last_hidden_state.zero_()  # the caller's copy: the static output is untouched
    assert not torch.equal(graphed.output.last_hidden_state, got.last_hidden_state)
    assert model.eager_calls == calls_before + 2  # the stand-in replay and the reference call above


@pytest.mark.parametrize("change", ["shape", "dtype", "key", "positional"])
def test_any_other_call_runs_the_model_eagerly(change):
    model = Encoder()
    graphed = CudaGraphModule(model, example(), graph_capture=stand_in_capture)
    inputs = example(batch=3) if change == "shape" else example()
    if change == "dtype":
        inputs["features"] = inputs["features"].double()
        model.double()
    args, kwargs = ((), inputs)
    if change == "key":
        kwargs = {"features": inputs["features"], "mask": inputs["mask"], "extra": None}
        with pytest.raises(TypeError):  # eager: the model itself rejects the unknown keyword
            graphed(*args, **kwargs)
    elif change == "positional":
        got = graphed(inputs["features"], inputs["mask"])
        assert torch.equal(got.last_hidden_state, model(**inputs).last_hidden_state)
    else:
        assert torch.equal(graphed(**kwargs).last_hidden_state, model(**kwargs).last_hidden_state)
    assert graphed.graph.replays == 0


def test_a_positional_example_replays_positional_calls():
    linear = nn.Linear(4, 2)
    graphed = CudaGraphModule(linear, torch.randn(3, 4), graph_capture=stand_in_capture)
    x = torch.randn(3, 4)
    assert torch.equal(graphed(x), linear(x)) and graphed.graph.replays == 1
    assert graphed(torch.randn(5, 4)).shape == (5, 2) and graphed.graph.replays == 1


def test_copy_output_copies_every_tensor_and_keeps_the_structure():
    hidden = torch.randn(2, 3)
    output = copy_output((BaseModelOutput(last_hidden_state=hidden), [hidden], 7))
    assert isinstance(output[0], BaseModelOutput) and isinstance(output[1], list) and output[2] == 7
    assert torch.equal(output[0].last_hidden_state, hidden) and output[0].last_hidden_state is not hidden
    assert output[1][0] is not hidden


@pytest.mark.cuda
@needs_cuda
def test_a_real_graph_replays_a_linear_stack_as_eager_computes_it():
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).cuda().half().eval()
    graphed = CudaGraphModule(model, torch.randn(32, 64, device="cuda", dtype=torch.float16))
    for _ in range(3):  # fresh inputs every call: the replay reads the new values
        x = torch.randn(32, 64, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            expected = model(x)
        assert torch.allclose(graphed(x), expected, rtol=1e-3, atol=1e-3)
