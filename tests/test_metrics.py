"""Metrics (metrics.py) against scikit-image and closed-form values."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

import metrics


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    kw = dict(data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    return structural_similarity(a[0], b[0], **kw) if a.shape[0] == 1 else \
        structural_similarity(a, b, channel_axis=0, **kw)


def brain_like(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth ellipses with texture on a black background, in [0, 1]. [N, 1, S, S]"""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    out = []
    for _ in range(n):
        rx, ry = rng.uniform(0.3, 0.45, 2)
        inside = (xx / rx) ** 2 + (yy / ry) ** 2 < 1
        texture = 0.6 + 0.3 * np.sin(xx * rng.uniform(10, 30)) * np.cos(yy * rng.uniform(10, 30))
        out.append(np.clip(inside * texture + rng.normal(0, 0.02, (size, size)), 0, 1)[None])
    return np.stack(out)


@pytest.mark.parametrize("kind", ["random", "brain_like", "rgb"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_equals_scikit_image(kind, dtype):
    rng = np.random.default_rng(1)
    if kind == "random":
        a = rng.random((5, 1, 48, 48))
        b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    elif kind == "brain_like":
        a, b = brain_like(5, 64, 2), brain_like(5, 64, 3)
    else:
        a, b = rng.random((3, 3, 40, 40)), rng.random((3, 3, 40, 40))
    ours = metrics.ssim(torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)).double().numpy()
    reference = np.array([skimage_ssim(a[i], b[i]) for i in range(len(a))])
    np.testing.assert_allclose(ours, reference, atol=1e-4 if dtype == torch.float32 else 1e-10)


def test_ssim_of_an_image_with_itself_is_one(device):
    x = torch.from_numpy(brain_like(3, 32, 0)).to(device)
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(3, dtype=x.dtype, device=device))
    torch.testing.assert_close(metrics.ms_ssim(x, x), torch.ones(3, dtype=x.dtype, device=device))


def test_ms_ssim_falls_with_noise_and_is_symmetric():
    x = torch.from_numpy(brain_like(4, 128, 5))
    g = torch.Generator().manual_seed(0)
    scores = [metrics.ms_ssim(x, (x + s * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)).mean()
              for s in (0.02, 0.1, 0.3)]
    assert 1 > scores[0] > scores[1] > scores[2] > 0
    y = torch.from_numpy(brain_like(4, 128, 6))
    torch.testing.assert_close(metrics.ms_ssim(x, y), metrics.ms_ssim(y, x))


def test_ssim_rejects_mismatched_or_tiny_inputs():
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(torch.rand(2, 1, 32, 32), torch.rand(3, 1, 32, 32))
    for metric in (metrics.ssim, metrics.ms_ssim):
        with pytest.raises(ValueError, match="larger than 10 px"):
            metric(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_ms_ssim_shares_the_ssim_computation():
    """One scale of MS-SSIM is SSIM; with more scales, each scale's contrast-structure term is SSIM's without
    its luminance term (Wang et al. 2003)."""
    a, b = torch.from_numpy(brain_like(3, 64, 8)), torch.from_numpy(brain_like(3, 64, 9))
    assert torch.equal(metrics.ms_ssim(a, b, weights=(1.0,)), metrics.ssim(a, b).clamp(min=0))
    s, cs = metrics._ssim_maps(a, b, with_cs=True)
    torch.testing.assert_close(metrics.ms_ssim(a, b, weights=(1.0, 1.0)),
                               (cs.mean(dim=[1, 2, 3]).clamp(min=0) *
                                metrics.ssim(F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)).clamp(min=0)).sqrt())
    assert s.shape == cs.shape == (3, 1, 64 - 10, 64 - 10)                     # the pixels 5 or more from the border


def test_nearest_ssim_prefilter_and_exhaustive_search(device):
    refs = torch.from_numpy(brain_like(40, 32, 7))
    g = torch.Generator().manual_seed(1)
    queries = (refs[[3, 17, 29]] + 0.02 * torch.randn(3, 1, 32, 32, generator=g, dtype=refs.dtype)).clamp(0, 1)
    refs, queries = refs.to(device), queries.to(device)
    best_all, idx_all = metrics.nearest_ssim(queries, refs, candidates=None, batch=50)
    brute = torch.stack([metrics.ssim(q.expand_as(refs), refs) for q in queries])          # [3, 40]
    torch.testing.assert_close(best_all, brute.max(dim=1).values)
    assert idx_all.tolist() == brute.argmax(dim=1).tolist() == [3, 17, 29]
    best_pre, idx_pre = metrics.nearest_ssim(queries, refs, candidates=4, prefilter_px=8, batch=5)
    assert idx_pre.tolist() == [3, 17, 29]
    torch.testing.assert_close(best_pre, best_all)


def test_diversity_and_memorization():
    same = torch.from_numpy(brain_like(1, 32, 0)).expand(10, 1, 32, 32)
    assert metrics.pairwise_diversity(same, pairs=20) == pytest.approx(1.0)
    varied = torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert metrics.pairwise_diversity(varied, pairs=20) < 0.1
    assert metrics.memorization_share(torch.tensor([0.5, 0.9, 0.95, 0.7]), torch.tensor([0.6, 0.8])) == 0.5


def test_fid_closed_form_on_gaussians():
    d = 6
    m = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0], dtype=torch.float64)
    s = 1.7
    expected = m.square().sum().item() + d * (1 - s) ** 2           # N(0, I) vs N(m, s^2 I)
    value = metrics.fid_from_stats(torch.zeros(d), torch.eye(d, dtype=torch.float64), m,
                                   s ** 2 * torch.eye(d, dtype=torch.float64))
    assert value == pytest.approx(expected, rel=1e-10)
    a = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cov = a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)          # same covariance: only the means count
    assert metrics.fid_from_stats(torch.zeros(d), cov, m, cov) == pytest.approx(m.square().sum().item(), rel=1e-8)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, d, generator=g, dtype=torch.float64)
    y = m + s * torch.randn(20000, d, generator=g, dtype=torch.float64)
    assert metrics.fid(x, y) == pytest.approx(expected, rel=0.05)   # from samples


def test_kid_is_the_unbiased_polynomial_mmd():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.randn(12, 4, generator=g, dtype=torch.float64) + 0.5
    k = lambda u, v: (u @ v / 4 + 1) ** 3
    n = 12
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(n)) / (n * n)
    assert metrics.kid(x, y, subsets=1, subset_size=n) == pytest.approx((xx + yy - 2 * xy).item(), rel=1e-10)
    same = metrics.kid(torch.randn(4000, 8, generator=g), torch.randn(4000, 8, generator=g), subsets=20,
                       subset_size=500)
    assert abs(same) < 0.02                                          # unbiased: about zero for one distribution


def test_level_mean_counts_each_level_once_however_often_it_is_drawn():
    assert metrics.level_mean([0.9, 0.9, 0.9, 0.5], [0, 0, 0, 5]) == pytest.approx(0.7)   # plain mean 0.8
    assert metrics.level_mean([0.9, 0.5], [0, 5]) == pytest.approx(0.7)                     # the same levels, once
    assert metrics.level_mean([0.2, 0.4, 0.6], [3, 3, 1]) == pytest.approx((0.3 + 0.6) / 2)
    assert metrics.level_mean([], []) == 0


def test_level_coverage_counts_levels_hit_and_their_evenness():
    levels = [0, 0, 1, 1, 2, 2, 3, 3]
    even = metrics.level_coverage([0, 1, 2, 3], levels)
    assert even["level_coverage"] == 1.0 and even["level_spread"] == 0.0
    collapsed = metrics.level_coverage([2, 2, 2, 2], levels)
    assert collapsed["level_coverage"] == 0.25 and collapsed["level_spread"] == pytest.approx(0.75)
    assert collapsed["level_counts"] == {0: 0, 1: 0, 2: 4, 3: 0}


def test_slice_level_from_oasis_names():
    import oasis
    assert oasis.slice_level("keras_png_slices_train/case_012_slice_31.nii.png") == 31
    assert oasis.slice_level("scan_0001.png") is None

