"""Image-quality and privacy metrics for generated slices, each a pure, batched torch function.

Owns: SSIM (numerically the same as scikit-image's Gaussian-weighted SSIM; one computation, _ssim_maps,
serves SSIM and MS-SSIM), the nearest-real SSIM search with a cheap prefilter, diversity and memorization
statistics, FID / KID from feature statistics, features from a user-supplied TorchScript Inception-v3, and
quality_scores, the scores of generated slices against real ones. Does not own gathering those scores for a
generator (scoring.py) or file handling (predict.py, runs.py).

Images are [N, C, H, W] with values in [0, 1].
"""

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import errors


SSIM_K1, SSIM_K2 = 0.01, 0.03              # Wang et al. 2004, eq. 7-9
SSIM_SIGMA, SSIM_TRUNCATE = 1.5, 3.5       # Gaussian window: sigma 1.5, radius int(3.5 * 1.5 + 0.5) = 5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)   # Wang et al. 2003, five scales


def _gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE, dtype=torch.float64, device=None):
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()                                                        # [2r + 1]


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> int:
    """The window radius r, once a and b are checked: two batches [N, C, H, W] of one shape, larger than 2r."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two batches of the same shape [N, C, H, W], got {list(a.shape)} and "
                         f"{list(b.shape)}")
    r = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(a.shape[-2:]) <= 2 * r:
        raise ValueError(f"ssim needs images larger than {2 * r} px, got {list(a.shape[-2:])}")
    return r


def _ssim_maps(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, with_cs: bool = False):
    """The SSIM map [N, C, H - 2r, W - 2r] of the pixels at least r from the border (with_cs: and the
    contrast-structure map of the same pixels), the one SSIM computation of this file (Wang et al. 2004, eq. 13)."""
    r = _check_pair(a, b)
    # The windows of those pixels lie inside the image, so no padding is needed: one unpadded 2D depthwise
    # conv per moment over a stack of all five.
    n, c, h, w = a.shape
    g = _gaussian_window(dtype=a.dtype, device=a.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    x = torch.stack([a, b, a * a, b * b, a * b], dim=1).reshape(1, 5 * n * c, h, w)         # [1, 5NC, H, W]
    k = (g[:, None] * g[None, :]).expand(5 * n * c, 1, -1, -1)                                  # [5NC, 1, 2r+1, 2r+1]
    ux, uy, xx, yy, xy = F.conv2d(x, k, groups=5 * n * c).reshape(n, 5, c, h - 2 * r, w - 2 * r).unbind(1)
    uxy, ux2, uy2 = ux * uy, ux * ux, uy * uy
    s = (2 * uxy + c1) * (2 * (xy - uxy) + c2) / ((ux2 + uy2 + c1) * (xx - ux2 + yy - uy2 + c2))
    if not with_cs:
        return s
    return s, (2 * (xy - uxy) + c2) / (xx - ux2 + yy - uy2 + c2)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-pair SSIM [N] of two batches [N, C, H, W] in [0, data_range]; equal to
    skimage.metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False) (mean over channels; the 5-pixel border is left out of the mean)."""
    return _ssim_maps(a, b, data_range).mean(dim=[1, 2, 3])


def ms_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, weights=MS_SSIM_WEIGHTS) -> torch.Tensor:
    """Per-pair multi-scale SSIM [N] (Wang et al. 2003): contrast-structure at each scale, full SSIM at the
    coarsest, 2x2 average pooling between scales. Fewer scales (renormalized weights) for small images."""
    r = _check_pair(a, b)
    scales = len(weights)
    while scales > 1 and min(a.shape[-2:]) // 2 ** (scales - 1) <= 2 * r:
        scales -= 1
    w = torch.tensor(weights[:scales], dtype=a.dtype, device=a.device)
    w = w / w.sum()
    values = []
    for k in range(scales):
        s, cs = _ssim_maps(a, b, data_range, with_cs=True)
        values.append((s if k == scales - 1 else cs).mean(dim=[1, 2, 3]))  # full SSIM only at the coarsest
        if k < scales - 1:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    values = torch.stack(values, dim=1).clamp(min=0)                          # [N, scales]
    return (values ** w).prod(dim=1)


# ----------------------------------------------------------------------------------------------
# Nearest neighbours, diversity, memorization

def nearest_ssim(queries: torch.Tensor, references: torch.Tensor, candidates: int = 16, prefilter_px: int = 32,
                 shortlist: int = 256, coarse_px: int = 64, batch: int = 256):
    """For each query, its highest SSIM over the references and that reference's index: ([N], [N]).

    Three stages: all references ranked by the L2 distance of prefilter_px-sized average-pooled copies
    (the `shortlist` closest kept), those ranked by SSIM of coarse_px-sized copies (the `candidates` best
    kept), and exact SSIM on those. candidates=None searches all references exactly.
    """
    n, m, size = queries.shape[0], references.shape[0], queries.shape[-1]
    if candidates is None or candidates >= m:
        cand = torch.arange(m, device=queries.device).expand(n, m)
    else:
        small_q, small_r = _pooled(queries, prefilter_px), _pooled(references, prefilter_px)
        cand = torch.cdist(small_q, small_r).topk(min(shortlist, m), dim=1, largest=False).indices  # [N, S]
        if cand.shape[1] > candidates:
            f = max(1, size // coarse_px)
            coarse = _pair_ssim(F.avg_pool2d(queries, f), F.avg_pool2d(references, f), cand, batch)
            cand = cand.gather(1, coarse.topk(candidates, dim=1).indices)                          # [N, K]
    best, pos = _pair_ssim(queries, references, cand, batch).max(dim=1)
    return best, cand.gather(1, pos[:, None])[:, 0]


def _pair_ssim(queries: torch.Tensor, references: torch.Tensor, cand: torch.Tensor, batch: int) -> torch.Tensor:
    """SSIM of each query with each of its candidate references. cand [N, K] -> [N, K]"""
    n, k = cand.shape
    flat_cand = cand.flatten()                                                # [N*K] (query, candidate) pairs
    scores = torch.empty(n * k, dtype=queries.dtype, device=queries.device)
    for start in range(0, n * k, batch):
        flat = torch.arange(start, min(start + batch, n * k), device=queries.device)
        scores[flat] = ssim(queries[flat // k], references[flat_cand[flat]])
    return scores.view(n, k)


def _pooled(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, min(size, x.shape[-1])).flatten(1)


def pairwise_diversity(images: torch.Tensor, pairs: int = 500, seed: int = 0, use_ms_ssim: bool = False) -> float:
    """Mean SSIM (or MS-SSIM) over random pairs of distinct images: lower means more diverse."""
    n = images.shape[0]
    if n < 2:
        raise ValueError("diversity needs at least two images")
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (pairs,), generator=g)
    j = (i + torch.randint(1, n, (pairs,), generator=g)) % n                  # never the same image
    metric = ms_ssim if use_ms_ssim else ssim
    return torch.cat([metric(images[i[s:s + 64]], images[j[s:s + 64]]) for s in range(0, pairs, 64)]).mean().item()


def memorization_share(generated_nearest: torch.Tensor, heldout_nearest: torch.Tensor) -> float:
    """Share of generated images closer (higher nearest-training SSIM) to some training image than any
    held-out real image is to the training set."""
    return (generated_nearest > heldout_nearest.max()).float().mean().item()


# ----------------------------------------------------------------------------------------------
# FID and KID from features

def feature_stats(features: torch.Tensor):
    """(mean [D], covariance [D, D]) of features [N, D], in float64."""
    f = features.double()
    mu = f.mean(dim=0)
    return mu, torch.cov(f.T)


def fid_from_stats(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Frechet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017). The trace of
    the matrix square root is taken from the eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric."""
    mu1, mu2, sigma1, sigma2 = mu1.double(), mu2.double(), sigma1.double(), sigma2.double()
    evals, evecs = torch.linalg.eigh(sigma1)
    root1 = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    middle = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * middle).item()


def fid(features1: torch.Tensor, features2: torch.Tensor) -> float:
    return fid_from_stats(*feature_stats(features1), *feature_stats(features2))


def kid(features1: torch.Tensor, features2: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> float:
    """Kernel inception distance (Binkowski et al. 2018): the unbiased MMD^2 with the kernel
    k(x, y) = (x.y / d + 1)^3, averaged over random subsets."""
    x, y = features1.double(), features2.double()
    d = x.shape[1]
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("kid needs at least two feature vectors on each side")
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(subsets):
        a = x[torch.randperm(x.shape[0], generator=g)[:m]]
        b = y[torch.randperm(y.shape[0], generator=g)[:m]]
        kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
        total += ((kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
                  - 2 * kxy.mean()).item()
    return total / subsets


# ----------------------------------------------------------------------------------------------
# The scores of generated slices against real ones (gathered by scoring.py for predict.py and monitor.py)

def real_baseline(reference: torch.Tensor, heldout: torch.Tensor, pairs: int = 500, ms_ssim: bool = True) -> dict:
    """What real slices score, to set generated scores against: held-out slices' nearest SSIM to the reference
    set, and the diversity of reference pairs. Computed once per reference set."""
    held_near, held_index = nearest_ssim(heldout, reference)
    out = {"heldout_near": held_near, "heldout_index": held_index.tolist(),
           "heldout_nearest_ssim_mean": held_near.mean().item(),
           "heldout_nearest_ssim_median": float(held_near.median().item()),
           "real_diversity_ssim": pairwise_diversity(reference, pairs)}
    if ms_ssim:
        out["real_diversity_ms_ssim"] = pairwise_diversity(reference, pairs, use_ms_ssim=True)
    return out


def quality_scores(generated: torch.Tensor, reference: torch.Tensor, heldout: torch.Tensor, features=None,
                   pairs: int = 500, closest: int = 8, baseline: dict = None, ms_ssim: bool = True) -> dict:
    """Scores of generated slices against real ones; images float [N, C, R, R] in [0, 1]. features: optional
    (generated [N, D], reference [M, D]) for FID and KID; baseline: real_baseline() of the same sets, when
    already computed. "closest" lists (generated index, reference index, SSIM) of the closest pairs, closest
    first. quality_gap = |nearest - held-out nearest| + |diversity - real diversity| (means of SSIM): 0 when
    the generated slices are as close to the training set, and as varied, as real held-out slices."""
    base = baseline if baseline is not None else real_baseline(reference, heldout, pairs, ms_ssim)
    gen_near, gen_index = nearest_ssim(generated, reference)
    out = {"nearest_ssim_mean": gen_near.mean().item(), "nearest_ssim_median": float(gen_near.median().item()),
           **{k: v for k, v in base.items() if k not in ("heldout_near", "heldout_index")},
           "diversity_ssim": pairwise_diversity(generated, pairs),
           "memorization_share": memorization_share(gen_near, base["heldout_near"])}
    if ms_ssim:
        out["diversity_ms_ssim"] = pairwise_diversity(generated, pairs, use_ms_ssim=True)
    out["quality_gap"] = (abs(out["nearest_ssim_mean"] - out["heldout_nearest_ssim_mean"]) +
                          abs(out["diversity_ssim"] - out["real_diversity_ssim"]))
    if features is not None:
        out["fid"], out["kid"] = fid(*features), kid(*features)
    order = gen_near.argsort(descending=True)[:closest].tolist()
    out["closest"] = [(i, int(gen_index[i]), gen_near[i].item()) for i in order]
    out["nearest_index"], out["heldout_nearest_index"] = gen_index.tolist(), base["heldout_index"]
    out["nearest_values"], out["heldout_nearest_values"] = gen_near.tolist(), base["heldout_near"].tolist()
    return out


def level_mean(values, levels) -> float:
    """The mean of values [N] over the levels [N] they belong to, each level's mean counted once: a score that
    does not rise or fall with how often each level is drawn (a low slice, mostly background, scores higher
    nearest-real SSIM than a large mid-brain slice of the same quality)."""
    by_level = {}
    for value, level in zip(values, levels):
        by_level.setdefault(level, []).append(value)
    return sum(sum(v) / len(v) for v in by_level.values()) / max(len(by_level), 1)


def mask_shape(labels: torch.Tensor) -> dict:
    """How tissue masks are drawn, from uint8 labels [N, H, W] (0 background, 1 CSF, 2 grey, 3 white matter):
    csf_share, CSF pixels over brain pixels, and csf_rim_share, the share of CSF pixels with a background
    4-neighbour (outside the image counts as background). A soft mask snapped to the nearest level puts a
    ring of CSF wherever brain meets background, which raises both."""
    lab = labels.long()
    brain, csf = lab > 0, lab == 1
    bg = F.pad((~brain).float()[:, None], (1, 1, 1, 1), value=1.0)[:, 0] > 0        # [N, H + 2, W + 2]
    touches_bg = bg[:, :-2, 1:-1] | bg[:, 2:, 1:-1] | bg[:, 1:-1, :-2] | bg[:, 1:-1, 2:]
    n_brain, n_csf = int(brain.sum()), int(csf.sum())
    return {"csf_share": n_csf / n_brain if n_brain else float("nan"),
            "csf_rim_share": int((csf & touches_bg).sum()) / n_csf if n_csf else float("nan")}


def position_error(asked, found) -> float:
    """Mean absolute difference between the slice positions a conditional G was asked for and the positions
    of the real slices nearest to what it made (for real held-out slices: their own positions)."""
    asked, found = torch.as_tensor(asked, dtype=torch.float64), torch.as_tensor(found, dtype=torch.float64)
    return (asked - found).abs().mean().item()


def level_coverage(generated_levels, reference_levels) -> dict:
    """How many of the reference set's axial levels are some generated slice's nearest-real level.
    generated_levels: the level of each generated slice's nearest real slice; reference_levels: every level
    present in the reference. level_coverage is the share of those hit; level_spread the share of generated
    slices that would have to move to another level for all levels to be hit equally (0 = uniform)."""
    levels = sorted(set(reference_levels))
    counts = [sum(1 for g in generated_levels if g == lv) for lv in levels]
    n = max(len(generated_levels), 1)
    uniform = n / max(len(levels), 1)
    return {"level_coverage": sum(c > 0 for c in counts) / max(len(levels), 1),
            "level_spread": sum(abs(c - uniform) for c in counts) / (2 * n),
            "level_counts": dict(zip(levels, counts))}


# ----------------------------------------------------------------------------------------------
# Features for FID / KID from a user-supplied network (nothing is downloaded)

INCEPTION_RES = 299                     # Inception-v3 input size (Szegedy et al. 2016)


class FeatureError(errors.ProjectError):
    """A feature network that returns something other than [N, D] features."""


def load_torchscript(path, device, option: str, give: str):
    """A user-supplied TorchScript file loaded on device (nothing in it runs but its scripted code). A missing
    file or another format is one ValueError line naming option and saying what to give."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{option} {path}: no such file")
    try:
        with warnings.catch_warnings():              # torch.jit is deprecated, but it is these files' format
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError, OSError):
        raise ValueError(f"{option} {path}: not a TorchScript file; give {give}") from None


def error_reason(e: Exception) -> str:
    """The first line of an exception raised by a user's scripted model (which can raise anything)."""
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def load_inception(path, device, option: str = "--inception"):
    """A user-supplied TorchScript feature network (inception-2015-12-05.pt), tried on two blank images so
    that a wrong file fails before any work. Errors are one ValueError line naming option."""
    model = load_torchscript(path, device, option, "inception-2015-12-05.pt, the TorchScript Inception-v3 of the "
                                                   "StyleGAN2-ADA metrics")
    try:
        inception_features(model, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), device=device)
    except FeatureError as e:
        raise ValueError(f"{option} {path}: {e}") from None
    except Exception as e:                                    # a scripted model can raise anything
        raise ValueError(f"{option} {path}: fails on a [2, 3, 299, 299] batch with model(x, "
                         f"return_features=True) ({error_reason(e)}); give the TorchScript Inception-v3 "
                         f"inception-2015-12-05.pt") from None
    return model


@torch.no_grad()
def inception_features(model, images: torch.Tensor, batch: int = 64, device="cpu") -> torch.Tensor:
    """uint8 images [N, C, H, W] -> features [N, D] from model(x, return_features=True), where x is float in
    the uint8 range [0, 255], [B, 3, 299, 299] (grayscale repeated to three channels, bilinear resize)."""
    features = []
    for chunk in images.split(batch):
        x = chunk.to(device, torch.float32)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)                                                  # [B, 3, H, W]
        if x.shape[-2:] != (INCEPTION_RES, INCEPTION_RES):
            x = F.interpolate(x, size=(INCEPTION_RES, INCEPTION_RES), mode="bilinear", align_corners=False)
        f = model(x, return_features=True)
        if f.ndim != 2 or f.shape[0] != x.shape[0]:
            raise FeatureError(f"the model returned features of shape {list(f.shape)}, not [N, D]")
        features.append(f.double().cpu())
    return torch.cat(features)
