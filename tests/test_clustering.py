"""Temporal clustering (the full-video paper's Section 3.3): hand-computed cases, a plain-Python
reference on many random inputs, and the ONNX export with a dynamic number of frames."""

from __future__ import annotations

import io
import math
import random
import warnings

import numpy as np
import pytest
import torch

from models.clustering import (
    CLUSTERING_MODES,
    assign_clusters,
    cluster_means,
    cluster_weights,
    cumulative_clusters,
    hamming_distances,
    slope_clusters,
    uniform_clusters,
)

# ---------------------------------------------------------------------------------------------
# Plain-Python reference: lists and loops, written from the rules in docs/models.md#full_video.


def ref_hamming(frames: list[list[float]]) -> list[float]:
    bits = [[v > 0 for v in f] for f in frames]
    return [
        sum(a != b for a, b in zip(bits[i], bits[i + 1])) / len(bits[i])
        for i in range(len(bits) - 1)
    ]


def ref_renumber(ids: list[int]) -> list[int]:
    out = [0]
    for prev, cur in zip(ids, ids[1:]):
        out.append(out[-1] + (cur != prev))
    return out


def ref_fill(ids: list[int], g: int) -> list[int]:
    ids = ref_renumber(ids)
    while len(set(ids)) < g:
        lengths = [ids.count(c) for c in range(max(ids) + 1)]
        longest = max(lengths)
        if longest < 2:
            break
        c = lengths.index(longest)
        cut = ids.index(c) + (longest + 1) // 2
        ids = [v + 1 if v > c or (v == c and i >= cut) else v for i, v in enumerate(ids)]
    return ids


def ref_uniform(t: int, g: int) -> list[int]:
    return ref_renumber([i * g // t for i in range(t)])


def ref_cumulative(d: list[float], g: int) -> list[int]:
    t = len(d) + 1
    acc = [0.0]
    for v in d:
        acc.append(acc[-1] + v)
    total = acc[-1]
    if total == 0:
        return ref_fill(ref_uniform(t, g), g)
    return ref_fill([min(math.floor(c * g / total), g - 1) for c in acc], g)


def ref_slope(d: list[float], g: int) -> list[int]:
    t = len(d) + 1
    if sum(d) == 0:
        return ref_uniform(t, g)
    cuts = set(sorted(range(len(d)), key=lambda i: (-d[i], i))[: g - 1])
    ids = [0]
    for i in range(len(d)):
        ids.append(ids[-1] + (i in cuts))
    return ids


def ref_means(x: list[list[float]], ids: list[int], g: int) -> list[list[float]]:
    k = max(ids) + 1
    out = []
    for j in range(g):
        members = [x[i] for i in range(len(x)) if ids[i] == j * k // g]
        out.append([sum(col) / len(members) for col in zip(*members)])
    return out


REFERENCE = {
    "cumulative": ref_cumulative,
    "slope": ref_slope,
    "uniform": lambda d, g: ref_uniform(len(d) + 1, g),
}


def ids(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# Hamming distances.


def test_hamming_by_hand() -> None:
    # Bits (> 0): f0 = 1001, f1 = 1101, f2 = 0000; zero counts as "off".
    x = torch.tensor(
        [
            [[[1.0, -1.0], [0.0, 2.0]]],
            [[[1.0, 1.0], [-1.0, 2.0]]],
            [[[-1.0, -1.0], [-1.0, 0.0]]],
        ]
    )  # (T=3, C=1, H=2, W=2)
    torch.testing.assert_close(hamming_distances(x), torch.tensor([0.25, 0.75]))
    batched = torch.stack([x, -x])  # (2, 3, 1, 2, 2); -x: bits 0100, 0010, 1110 (zeros stay off)
    torch.testing.assert_close(hamming_distances(batched), torch.tensor([[0.25, 0.75], [0.5, 0.5]]))


def test_hamming_matches_reference_and_edge_lengths() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 4, 5, generator=gen)
    expected = ref_hamming(x.flatten(1).tolist())
    torch.testing.assert_close(hamming_distances(x), torch.tensor(expected))
    assert hamming_distances(x[:1]).shape == (0,)
    assert hamming_distances(torch.randn(2, 1, 3, 4, 4)).shape == (2, 0)


# ---------------------------------------------------------------------------------------------
# Assignments with hand-computed answers.


def test_figure3_example() -> None:
    # Paper Figure 3, frames f1..f10 and g = 3: cumulative -> (f1-f4)(f5-f7)(f8-f10), slope ->
    # (f1-f6)(f7)(f8-f10). The figure's numbers are not in the text; these distances (in 1/32)
    # reproduce both answers: C = 0,1,2,3,6,7,11,15,16,17; thirds of 17 at 5.67 and 11.33 put
    # f5 (C=6) in cluster 1 and f8 (C=15) in cluster 2; the two largest steps are f6->f7 and
    # f7->f8 (4 each).
    d = torch.tensor([1, 1, 1, 3, 1, 4, 4, 1, 1], dtype=torch.float32) / 32
    assert cumulative_clusters(d, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert slope_clusters(d, 3).tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 2, 2]


def test_cumulative_follows_the_distance_not_the_time() -> None:
    # C = 0,4,4,...,4: floor(2 * C / 4) puts only the first frame in cluster 0.
    jump_first = torch.tensor([4.0, 0, 0, 0, 0, 0, 0])
    assert cumulative_clusters(jump_first, 2).tolist() == [0, 1, 1, 1, 1, 1, 1, 1]
    assert uniform_clusters(torch.zeros(7), 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # C = 0,1,2,3,4 and g = 2: 2C/4 = 0, .5, 1, 1.5, 2 -> a frame exactly on C_N / g opens the
    # next cluster, the last frame is clamped to g - 1.
    assert cumulative_clusters(torch.tensor([1.0, 1, 1, 1]), 2).tolist() == [0, 0, 1, 1, 1]


def test_cumulative_refills_empty_clusters_by_splitting_the_longest() -> None:
    # C = 0,0,0,0,1,1,1 -> floor(3C) clamped = 0,0,0,0,2,2,2: cluster 1 is empty. Renumbered
    # 0,0,0,0,1,1,1; the longest (cluster 0, 4 frames) splits 2 + 2.
    d = torch.tensor([0.0, 0, 0, 1, 0, 0])
    assert cumulative_clusters(d, 3).tolist() == [0, 0, 1, 1, 2, 2, 2]
    # Two longest clusters (3 frames each): the earliest splits, ceil(3/2) = 2 frames keep the id.
    assert cumulative_clusters(torch.tensor([0.0, 0, 1, 0, 0]), 3).tolist() == [0, 0, 1, 2, 2, 2]
    # One jump and g = 4: 0,0,0,0,0,3,3 -> 0^5 1^2 -> split 5 as 3+2 -> 0^3 1^2 2^2 -> split the
    # earliest longest (cluster 0, 3 frames) as 2+1.
    d = torch.tensor([0.0, 0, 0, 0, 5, 0])
    assert cumulative_clusters(d, 4).tolist() == [0, 0, 1, 2, 2, 3, 3]


def test_zero_total_distance_gives_equal_segments() -> None:
    # floor(i * 3 / 7) for i = 0..6.
    expected = [0, 0, 0, 1, 1, 2, 2]
    for fn in (cumulative_clusters, slope_clusters, uniform_clusters):
        assert fn(torch.zeros(6), 3).tolist() == expected


def test_uniform_formula() -> None:
    assert uniform_clusters(torch.zeros(9), 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert uniform_clusters(torch.zeros(4), 4).tolist() == [0, 0, 1, 2, 3]


def test_slope_ties_take_the_earliest() -> None:
    # Three distances of 2 at 1, 2 and 4 compete for two cuts: after frames 1 and 2.
    assert slope_clusters(torch.tensor([1.0, 2, 2, 0, 2]), 3).tolist() == [0, 0, 1, 2, 2, 2]
    # One non-zero distance and two cuts: the other cut goes to the earliest zero.
    assert slope_clusters(torch.tensor([0.0, 0, 5, 0]), 3).tolist() == [0, 1, 1, 2, 2]


@pytest.mark.parametrize("mode", CLUSTERING_MODES)
def test_t_equal_g_and_t_below_g(mode: str) -> None:
    d = torch.tensor([0.5, 0.1, 0.0, 0.3])
    assert assign_clusters(d, 5, mode).tolist() == [0, 1, 2, 3, 4]
    # T = 3 < g = 5: every frame its own cluster.
    assert assign_clusters(torch.tensor([0.2, 0.0]), 5, mode).tolist() == [0, 1, 2]
    assert assign_clusters(torch.zeros(0), 4, mode).tolist() == [0]
    # g = 1: one cluster.
    assert assign_clusters(d, 1, mode).tolist() == [0, 0, 0, 0, 0]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="num_clusters"):
        cumulative_clusters(torch.zeros(3), 0)
    with pytest.raises(ValueError, match="unknown clustering mode"):
        assign_clusters(torch.zeros(3), 2, "kmeans")


# ---------------------------------------------------------------------------------------------
# Aggregation.


def test_cluster_means_by_hand() -> None:
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    means = cluster_means(x, ids([0, 0, 1, 1, 1]), 2)
    torch.testing.assert_close(means, torch.tensor([[1.5], [4.0]]))
    # T = 3 < g = 5: output j takes frame floor(j * 3 / 5) = 0, 0, 1, 1, 2.
    x3 = torch.tensor([[1.0], [2.0], [3.0]])
    repeated = cluster_means(x3, ids([0, 1, 2]), 5)
    torch.testing.assert_close(repeated, torch.tensor([[1.0], [1.0], [2.0], [2.0], [3.0]]))


def test_cluster_weights_rows_sum_to_one() -> None:
    w = cluster_weights(ids([0, 0, 0, 1, 2, 2]), 3)
    expected = torch.tensor(
        [[1 / 3, 1 / 3, 1 / 3, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0.5, 0.5]]
    )
    torch.testing.assert_close(w, expected)


def test_cluster_means_gradient_is_weight_over_count() -> None:
    x = torch.randn(5, 2, 3, 3, requires_grad=True)
    means = cluster_means(x, ids([0, 0, 1, 1, 1]), 2)
    assert means.shape == (2, 2, 3, 3)
    (means[0].sum() * 3.0 + means[1].sum() * 6.0).backward()
    expected = torch.tensor([1.5, 1.5, 2.0, 2.0, 2.0]).view(5, 1, 1, 1).expand(5, 2, 3, 3)
    torch.testing.assert_close(x.grad, expected)


def test_batched_equals_per_video() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 11, 4, 2, 2, generator=gen)
    d = hamming_distances(x)
    for mode in CLUSTERING_MODES:
        a = assign_clusters(d, 4, mode)
        means = cluster_means(x, a, 4)
        for n in range(3):
            assert torch.equal(a[n], assign_clusters(d[n], 4, mode))
            torch.testing.assert_close(means[n], cluster_means(x[n], a[n], 4))


# ---------------------------------------------------------------------------------------------
# Against the reference on many random inputs.


def _random_distances(rng: random.Random, t: int) -> list[float]:
    kind = rng.choice(["int", "float", "sparse"])
    if kind == "int":  # small integers: exact sums, frequent ties and exact cluster boundaries
        return [float(rng.randint(0, 3)) for _ in range(t - 1)]
    if kind == "sparse":
        return [rng.random() if rng.random() < 0.15 else 0.0 for _ in range(t - 1)]
    return [rng.random() for _ in range(t - 1)]


def test_assignments_match_reference() -> None:
    rng = random.Random(1234)
    for _ in range(600):
        t = rng.randint(1, 40)
        g = rng.randint(1, 12)
        d = _random_distances(rng, t)
        # float64 so that cumulative sums and quotients are the same IEEE operations as the
        # reference's Python floats.
        dt = torch.tensor(d, dtype=torch.float64)
        for mode in CLUSTERING_MODES:
            got = assign_clusters(dt, g, mode).tolist()
            want = REFERENCE[mode](d, g)
            assert got == want, (mode, d, g, got, want)
            # Invariants: starts at 0, steps of 0 or 1, exactly min(T, g) clusters.
            assert got[0] == 0 and all(b - a in (0, 1) for a, b in zip(got, got[1:]))
            assert len(set(got)) == min(t, g)


def test_small_integer_distances_match_reference_in_float32() -> None:
    rng = random.Random(99)
    for _ in range(200):
        t, g = rng.randint(2, 24), rng.randint(2, 9)
        d = [float(rng.randint(0, 4)) for _ in range(t - 1)]
        for mode in CLUSTERING_MODES:
            assert assign_clusters(torch.tensor(d), g, mode).tolist() == REFERENCE[mode](d, g)


def test_means_match_reference() -> None:
    rng = random.Random(7)
    for _ in range(100):
        t, g, dim = rng.randint(1, 20), rng.randint(1, 8), rng.randint(1, 4)
        x = [[rng.uniform(-1, 1) for _ in range(dim)] for _ in range(t)]
        a = REFERENCE[rng.choice(CLUSTERING_MODES)](_random_distances(rng, t), g)
        got = cluster_means(torch.tensor(x, dtype=torch.float64), ids(a), g)
        torch.testing.assert_close(got, torch.tensor(ref_means(x, a, g), dtype=torch.float64))


def test_runs_on_meta_device() -> None:
    # Tensor-only code runs without data, which the FLOP counter in bench/models.py relies on.
    x = torch.empty(2, 9, 4, 3, 3, device="meta")
    d = hamming_distances(x)
    for mode in CLUSTERING_MODES:
        assert cluster_means(x, assign_clusters(d, 4, mode), 4).shape == (2, 4, 4, 3, 3)


# ---------------------------------------------------------------------------------------------
# ONNX export with a dynamic number of frames.


class _ClusterModule(torch.nn.Module):
    def __init__(self, mode: str, g: int) -> None:
        super().__init__()
        self.mode, self.g = mode, g

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = assign_clusters(hamming_distances(x), self.g, self.mode)
        return cluster_means(x, a, self.g), a


def _check_onnx(model: bytes, module: _ClusterModule, lengths: list[int]) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(5)
    for t in lengths:
        for n in (1, 2):
            # A step in the sign pattern half-way makes the clustering non-uniform.
            x = torch.randn(n, t, 6, 4, 4, generator=gen)
            x[:, t // 2 :] += 1.5
            means, assignment = module(x)
            onnx_means, onnx_assignment = session.run(None, {"x": x.numpy()})
            np.testing.assert_array_equal(onnx_assignment, assignment.numpy())
            np.testing.assert_allclose(onnx_means, means.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", CLUSTERING_MODES)
def test_onnx_export_torchscript(mode: str) -> None:
    module = _ClusterModule(mode, 4)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(1, 12, 6, 4, 4),),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["means", "assignment"],
            dynamic_axes={"x": {0: "videos", 1: "frames"}},
        )
    _check_onnx(buffer.getvalue(), module, [1, 2, 3, 4, 7, 12, 33])


@pytest.mark.slow  # the torch.export-based exporter: 3-12 s, the TorchScript one under 1 s
def test_onnx_export_dynamo(tmp_path) -> None:
    module = _ClusterModule("cumulative", 4)
    frames = torch.export.Dim("frames", min=2, max=4096)
    videos = torch.export.Dim("videos", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (torch.randn(2, 12, 6, 4, 4),),
            dynamo=True,
            input_names=["x"],
            output_names=["means", "assignment"],
            dynamic_shapes=({0: videos, 1: frames},),
            verbose=False,
        )
    path = tmp_path / "clustering.onnx"
    assert program is not None  # the dynamo exporter returns the program
    program.save(str(path))
    _check_onnx(path.read_bytes(), module, [2, 3, 5, 12, 40])
