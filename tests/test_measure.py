from engine.core.measure import summarise, time_interleaved


class FakeClock:
    """A deterministic clock: each call of a variant advances time by that variant's cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_summary_quartiles_exact():
    stats = summarise([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (stats.q1, stats.median, stats.q3) == (2.0, 3.0, 4.0) and stats.spread == 2.0 / 3.0


def test_interleaved_medians_and_rotation():
    clock = FakeClock()
    order = []

    def variant(name, cost):
        def run():
            order.append(name)
            clock.now += cost

        return run

    stats = time_interleaved({"a": variant("a", 1.0), "b": variant("b", 3.0)}, warmup=1, repeats=4, clock=clock)
    assert stats["a"].median == 1.0 and stats["b"].median == 3.0 and stats["a"].stable
    assert order[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # after warm-up, rounds rotate


def test_noisy_variant_is_retried_then_flagged():
    clock = FakeClock()
    calls = {"noisy": 0}

    def noisy():
        calls["noisy"] += 1
        clock.now += 1.0 if calls["noisy"] % 2 else 5.0

    def steady():
        clock.now += 2.0

    stats = time_interleaved({"noisy": noisy, "steady": steady}, warmup=0, repeats=6, max_spread=0.1, retries=2, clock=clock)
    assert calls["noisy"] == 18  # measured three times: once, then two retries
    assert not stats["noisy"].stable and stats["steady"].stable and stats["steady"].median == 2.0


def test_a_timer_measures_each_call_itself():
    """``timer(call)`` replaces the wall clock (the GPU profiler passes CUDA events): its numbers are the samples."""
    seen, costs = [], {"a": iter([2.0, 4.0, 3.0]), "b": iter([1.0, 1.0, 1.0])}

    def timer(call):
        name = call()
        seen.append(name)
        return next(costs[name])

    stats = time_interleaved({"a": lambda: "a", "b": lambda: "b"}, warmup=0, repeats=3, max_spread=10.0, timer=timer)
    assert seen == ["a", "b", "b", "a", "a", "b"]
    assert (stats["a"].median, stats["a"].q1, stats["a"].q3) == (3.0, 2.5, 3.5) and stats["b"].median == 1.0


def test_set_threads_holds_for_torch_and_numba():
    """Launching Numba's OpenMP pool resets the process's OpenMP thread count: set_threads must leave
    torch on the requested count too (run in a fresh interpreter, where the pool is not launched yet)."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "torch.relu(torch.ones(1 << 20))\n"  # torch's OpenMP pool is up first (a parallel elementwise op)
        "import numba\n"
        "from engine.runtime.execution import set_threads\n"
        "set_threads(1)\n"
        "print(torch.get_num_threads(), numba.get_num_threads())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]
