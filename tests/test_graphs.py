"""BucketGraphs: eager on CPU; on a GPU, graph replay equals eager for every bucket and shape."""

import pytest
import torch

from models.cache import RingKVCache
from models.graphs import BucketGraphs


def make_step(cache: RingKVCache, weight: torch.Tensor):
    def step(x, slots, index):  # x (B, 1, D): write K/V at static indices, attend over the slot's cache
        cache.write(0, slots, index, x[:, :, None, :], x[:, :, None, :])
        k, v = cache.read(0, slots)  # (B, C, 1, D)
        scores = torch.einsum("bd,bcd->bc", x[:, 0] @ weight, k[:, :, 0])
        return torch.einsum("bc,bcd->bd", scores.softmax(-1), v[:, :, 0])

    return step


def run(device: str, graphs: bool):
    torch.manual_seed(0)
    cache = RingKVCache(num_layers=1, num_slots=8, num_heads=1, head_dim=4, window=4, device=device)
    weight = torch.randn(4, 4, device=device)
    runner = BucketGraphs(make_step(cache, weight), enabled=graphs)
    outs = []
    for n in (1, 2, 2, 4, 1):
        slots = list(range(n))
        index = cache.reserve(slots, torch.zeros(n, 1, dtype=torch.long))
        x = torch.randn(n, 1, 4, device=device)
        outs.append(runner(x, torch.tensor(slots, device=device), index.to(device)).clone())
    return outs, runner


def test_eager_fallback_on_cpu():
    outs, runner = run("cpu", graphs=True)  # asked for graphs, but on CPU it runs eagerly
    ref, _ = run("cpu", graphs=False)
    for a, b in zip(outs, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert runner.num_graphs == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_replay_equals_eager_on_gpu():
    outs, runner = run("cuda", graphs=True)
    ref, _ = run("cuda", graphs=False)
    for a, b in zip(outs, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert runner.num_graphs == 3  # buckets 1, 2, 4


SIZES = (2, 2, 4, 2, 4)


def run_stateful(device: str, graphs: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A step that advances per-row state, as the models' steps do (a running sum per row); and the inputs."""
    state = torch.zeros(8, 3, device=device)

    def step(x, rows):
        state[rows] = state[rows] + x
        return state[rows] * 2

    runner = BucketGraphs(step, enabled=graphs)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 3, generator=g) for n in SIZES]
    return [runner(x.to(device), torch.arange(len(x), device=device)).clone().cpu() for x in xs], xs


def expected_running_sums(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    total, want = torch.zeros(8, 3), []
    for x in xs:
        total[: len(x)] += x
        want.append(2 * total[: len(x)].clone())
    return want


def test_stateful_step_advances_once_per_call_on_cpu():
    outs, xs = run_stateful("cpu", graphs=True)
    for got, want in zip(outs, expected_running_sums(xs), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stateful_graph_replay_equals_eager_on_gpu():
    # a bucket's first call must not advance the state more than once (warm-up runs are real runs)
    outs, xs = run_stateful("cuda", graphs=True)
    for got, want in zip(outs, expected_running_sums(xs), strict=True):
        torch.testing.assert_close(got, want)
