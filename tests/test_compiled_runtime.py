"""The spdy::csr_linear custom op and the compiled runtime compute what eager SparseLinear computes."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.runtime.compiled import CompiledModel, _pad, _Runner, compile_model
from engine.runtime.int8 import Int8Linear
from engine.runtime.modules import SparseLinear
from engine.runtime.modules import replace_submodule
from engine.runtime.ops import OpSparseLinear, csr_linear, use_custom_ops

ROOT = Path(__file__).resolve().parents[1]


def pruned_linear(n_in: int, n_out: int, sparsity: float, bias: bool = True, seed: int = 0) -> nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n_out, n_in, generator=generator))
        linear.weight.mul_((torch.rand(n_out, n_in, generator=generator) >= sparsity).float())
        if bias:
            linear.bias.copy_(torch.randn(n_out, generator=generator))
    return linear


def sparsify_module(model: nn.Module, names: list[str]) -> nn.Module:
    """The named Linears as eager ``SparseLinear`` (numba kernel), in place."""
    for name in names:
        replace_submodule(model, name, SparseLinear.from_linear(model.get_submodule(name)))
    return model


class Block(nn.Module):
    """A transformer-like MLP block: Linear, GELU, Linear, residual, LayerNorm."""

    def __init__(self, width: int = 96, hidden: int = 200, sparsity: float = 0.7):
        super().__init__()
        self.up = pruned_linear(width, hidden, sparsity, seed=1)
        self.down = pruned_linear(hidden, width, sparsity, seed=2)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.down(F.gelu(self.up(x))))


def sparse_block() -> Block:
    return sparsify_module(Block().eval(), ["up", "down"])


@pytest.mark.parametrize(
    "n_in, n_out, sparsity, bias, shape",
    [
        (96, 200, 0.7, True, (3, 70)),  # partial token tile
        (384, 1536, 0.67, True, (2, 64)),  # a MiniLM FFN shape, whole tiles
        (200, 33, 0.9, False, (5,)),  # few tokens, no bias
        (64, 64, 0.0, True, (130,)),  # dense weight kept exactly
    ],
)
def test_custom_op_equals_eager_sparse_linear(n_in, n_out, sparsity, bias, shape):
    linear = pruned_linear(n_in, n_out, sparsity, bias)
    eager = SparseLinear.from_linear(linear)
    op = OpSparseLinear.from_sparse_linear(eager)
    x = torch.randn(*shape, n_in, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = eager(x)
        got = op(x)
        reference = linear(x)
    assert got.shape == (*shape, n_out)
    assert torch.equal(got, expected)  # the same kernel on the same arrays: bit for bit
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4)
    assert op.density == pytest.approx(eager.density)


def test_custom_op_from_linear_and_non_contiguous_input():
    linear = pruned_linear(48, 40, 0.6)
    op = OpSparseLinear.from_linear(linear)
    x = torch.randn(48, 20).t()  # (20, 48), not contiguous
    with torch.no_grad():
        torch.testing.assert_close(op(x), linear(x), rtol=1e-4, atol=1e-4)


def test_custom_op_passes_opcheck():
    op = OpSparseLinear.from_linear(pruned_linear(40, 24, 0.5))
    x = torch.randn(2, 7, 40)
    args = (x, op.indptr, op.indices, op.values, op.bias, op.panel_width)
    torch.library.opcheck(csr_linear, args, test_utils=("test_schema", "test_faketensor"))


def test_custom_op_rejects_wrong_dtypes():
    op = OpSparseLinear.from_linear(pruned_linear(16, 8, 0.5))
    with pytest.raises(TypeError, match="float32"):
        torch.ops.spdy.csr_linear(torch.randn(2, 16, dtype=torch.float64), op.indptr, op.indices, op.values, op.bias, op.panel_width)
    with pytest.raises(TypeError, match="int32"):
        torch.ops.spdy.csr_linear(torch.randn(2, 16), op.indptr, op.indices.long(), op.values, op.bias, op.panel_width)


def test_use_custom_ops_swaps_sparse_linears_only():
    model = use_custom_ops(sparse_block())
    assert isinstance(model.up, OpSparseLinear) and isinstance(model.down, OpSparseLinear)
    assert isinstance(model.norm, nn.LayerNorm)


def test_no_graph_breaks_with_the_op():
    model = use_custom_ops(sparse_block())
    x = torch.randn(3, 70, 96)
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(x)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1
        # the eager SparseLinear (NumPy views, a Numba call) is what breaks the graph
        assert torch._dynamo.explain(sparse_block())(x).graph_break_count > 0
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
        assert torch.equal(compiled(x), model(x))
    torch._dynamo.reset()


def test_compile_model_inductor_fullgraph_matches_eager():
    """Inductor with frozen weights, fullgraph (no breaks allowed); ~10 s with a cold cache."""
    model = sparse_block()
    x = torch.randn(3, 70, 96)
    compiled = compile_model(model, x)
    assert compiled.compile_seconds > 0
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="compiled for"):
        compiled(torch.randn(2, 70, 96))  # not a dict of (batch, tokens) tensors: nothing to pad
    assert isinstance(model.up, SparseLinear)  # the caller's model is left as it was
    torch._dynamo.reset()


class SharedInput(nn.Module):
    """Three sparse projections of one input (like Q, K and V), of different heights."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (OpSparseLinear.from_linear(pruned_linear(40, rows, 0.6, seed=rows)) for rows in (40, 40, 56))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.q(x)) + self.k(x) * self.v(x)[..., 8:48]


@pytest.mark.parametrize("stack", [True, False])
def test_stacking_sibling_sparse_layers(stack):
    model = SharedInput().eval()
    x = torch.randn(3, 70, 40)
    compiled = compile_model(model, x, stack_siblings=stack)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    if "fxgraph_cache_hit" not in compiled.cache:  # a cached graph was stacked when it was compiled
        assert compiled.cache.get("spdy_stacked_groups", 0) == (1 if stack else 0)
    torch._dynamo.reset()


class SharedInt8Input(nn.Module):
    """Three int8 projections of one input (like Q, K and V), of different heights, and one of another."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.q, self.k, self.v, self.out = (
            Int8Linear.from_float(torch.randn(rows, 40, generator=generator), torch.randn(rows, generator=generator))
            for rows in (40, 40, 56, 40)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x), self.out(x.flip(-1))], dim=-1)


@pytest.mark.parametrize("join", [True, False])
def test_joining_sibling_int8_layers_is_exact(join):
    """Q, K and V's int8 GEMMs run as one on the weights side by side: int32 sums are exact, so the
    compiled model's output is the eager model's bit for bit, joined or not."""
    model = SharedInt8Input().eval()
    x = torch.randn(2, 70, 40)
    compiled = compile_model(model, x, stack_siblings=join)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
    if "fxgraph_cache_hit" not in compiled.cache:
        assert compiled.cache.get("spdy_joined_int_mm", 0) == (1 if join else 0)
    torch._dynamo.reset()


def test_freezing_takes_effect():
    """A dense Linear's weight is pre-packed for oneDNN only when freezing is on.  (In torch 2.14
    ``torch.compile(options={"freezing": True})`` alone is silently ignored; compile_model patches
    inductor's config around the calls.)"""
    model = nn.Sequential(nn.Linear(32, 48), nn.GELU()).eval()
    x = torch.randn(4, 32)
    for freezing in (True, False):
        compiled = compile_model(model, x, freezing=freezing)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
        packed = compiled.cache.get("mkldnn_linear_weight_pack_matcher_count", 0)
        if torch.backends.mkldnn.is_available():
            assert (packed > 0) == freezing
        torch._dynamo.reset()


def test_pad_and_shape_policies_without_compiling():
    """The padding logic alone, on an eager stand-in for the compiled function."""
    value = torch.tensor([[5, 6, 7], [8, 9, 10]])
    assert _pad(value, 4, 5).tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 0, 0], [5, 6, 7, 0, 0], [5, 6, 7, 0, 0]]

    def run(model, inputs):  # a per-row function that ignores masked tokens, like a pooled embedding
        mask = inputs["attention_mask"].float()
        return (inputs["input_ids"].float() * mask).sum(1) / mask.sum(1)

    calls = []

    def compiled(inputs):
        calls.append(tuple(inputs["input_ids"].shape))
        return run(None, inputs)

    make = lambda shapes: CompiledModel(  # noqa: E731
        nn.Identity(), compiled, {"input_ids": (4, 6), "attention_mask": (4, 6)}, 4, 6, shapes, 0.0, None
    )
    ids = torch.randint(1, 50, (9, 5))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch.testing.assert_close(make("pad")(inputs), run(None, inputs))
    assert calls == [(4, 6)] * 3  # 9 rows in three padded pieces
    with pytest.raises(ValueError):
        make("error")(inputs)
    with pytest.raises(ValueError, match="cannot pad"):
        make("pad")({key: torch.ones(2, 7, dtype=torch.long) for key in inputs})  # more tokens than compiled
    with pytest.raises(ValueError, match="shapes must be"):
        compile_model(nn.Identity(), torch.zeros(1), shapes="grow")


def tiny_bert(sparsity: float = 0.6):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    with torch.no_grad():
        for name in names:
            weight = model.get_submodule(name).weight
            weight.mul_((torch.rand_like(weight) >= sparsity).float())
    return sparsify_module(model, names)


def tiny_inputs(batch: int = 4, tokens: int = 16, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 120, (batch, tokens), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, tokens - 3 * row :] = 0
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.slow
def test_compiled_sparse_bert_with_pooling_and_padding(tmp_path):
    from engine.model.sources import mean_pooled_embedding

    model = tiny_bert()
    inputs = tiny_inputs()
    compiled = compile_model(model, inputs, mean_pooled_embedding, cache_dir=tmp_path)
    assert compiled.cache_dir == str(tmp_path) and any(tmp_path.iterdir())
    with torch.no_grad():
        torch.testing.assert_close(compiled(inputs), mean_pooled_embedding(model, inputs), rtol=1e-5, atol=1e-5)
        smaller = {key: value[:3, :12] for key, value in tiny_inputs(seed=1).items()}
        torch.testing.assert_close(compiled(smaller), mean_pooled_embedding(model, smaller), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.slow
def test_second_process_hits_the_inductor_cache(tmp_path):
    """A new process compiling the same model in the same cache directory loads the FX graph."""
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_compiled_runtime import sparse_block
        from engine.runtime.compiled import compile_model
        torch.manual_seed(0)
        compiled = compile_model(sparse_block(), torch.randn(3, 70, 96), cache_dir={str(tmp_path)!r})
        print("HITS", compiled.cache.get("fxgraph_cache_hit", 0), "SECONDS", compiled.compile_seconds)
        """
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    lines = [next(line for line in run.stdout.splitlines() if line.startswith("HITS")).split() for run in runs]
    assert lines[0][1] == "0" and lines[1][1] == "1"
    assert float(lines[1][3]) < float(lines[0][3])


def test_runner_wraps_run_fn():
    runner = _Runner(nn.Linear(2, 3), lambda model, inputs: model(inputs["x"]) * 2)
    x = torch.randn(4, 2)
    torch.testing.assert_close(runner({"x": x}), runner.model(x) * 2)


@pytest.mark.parametrize("make", ["SharedInput", "SharedInt8Input"])
def test_a_cached_graph_is_never_run_with_another_models_stacked_weights(tmp_path, make):
    """Two models of the same shapes and other weights, compiled one after the other into one cache:
    each computes its own outputs (the sibling pass's stacked Q/K/V constants are not reused)."""
    first = globals()[make]().eval()
    second = globals()[make]().eval()
    with torch.no_grad():
        for buffer in second.buffers():
            if buffer.is_floating_point():
                buffer.mul_(1.5)
            elif buffer.dtype == torch.int8:
                buffer.copy_(torch.clamp(buffer.to(torch.int16) // 2, -127, 127))
    x = torch.randn(2, 70, 40)
    for model in (first, second):
        compiled = compile_model(model, x, cache_dir=tmp_path)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first(x), second(x))
    torch._dynamo.reset()


def test_the_weights_digest_tells_weights_apart_exactly():
    from engine.runtime.compiled import weights_digest

    model = nn.Linear(3, 2)
    same = nn.Linear(3, 2)
    same.load_state_dict(model.state_dict())
    assert weights_digest(model) == weights_digest(same) and len(weights_digest(model)) == 64
    with torch.no_grad():
        same.bias[1] = torch.nextafter(same.bias[1], torch.tensor(float("inf")))  # one ulp
    assert weights_digest(model) != weights_digest(same)
