"""Projection of a real slice into the generator's latent space: the w (or, with w_plus, one w per layer) and
the per-pixel noise maps whose synthesized image is closest to the slice.

Owns: the w statistics the search starts from, the learning-rate and w-noise schedules, the noise
regularizer, the image distance, the optimization loop, loading a TorchScript feature network for the
distance, and the files of `predict.py project` and `predict.py from_w`: reading the target images,
projection<NNNN>.png / .gif, projections.png, projection.json and projected_w.npz, and the images rebuilt
from a projected_w.npz. Does not own the command line (predict.py), decoding an image (decode.py), how files
are written (runs.py), the networks (modules.py) or SSIM itself (metrics.py). Imports nothing from predict.py.

The procedure is that of the StyleGAN2 paper (Karras et al. 2020, sec. 5 and appendix D): start at the mean
w of 10,000 mapped z (seed 123); Adam (betas 0.9, 0.999) on w and on every layer's noise map for 1,000 steps;
learning rate 0.1 with a linear ramp-up over the first 5 % of the steps and a cosine ramp-down over the last
25 %; Gaussian noise of scale w_std * 0.05 * max(0, 1 - t / 0.75)^2 added to w at each step (t = step /
steps) so the search explores early and settles late; the noise maps renormalized to mean 0 / std 1 after
each step and kept free of spatial correlation by a regularizer of weight 1e5. The noise maps are drawn anew
from `seed` (the generator's own const noise is not used), so a projection is reproducible from its seed.

The distance. The paper measures LPIPS on VGG16 features, whose weights would have to be downloaded. Here
the default needs nothing: distance = (1 - SSIM(x, target)) + mean |x - target|, both on the [0, 1] scale,
SSIM from metrics.ssim (Gaussian window, sigma 1.5). SSIM compares local means, contrasts and structure,
which is what tells tissue boundaries apart in a grayscale slice; it is blind to a uniform intensity offset
in flat regions (and the 5-pixel border is outside its mean), which the L1 term pins down. MS-SSIM is not
used: its product of clamped powers has no useful gradient where a scale's value is 0. A user-supplied
TorchScript feature network (`load_feature_net`, float [N, 3, H, W] in 0..255 -> features [N, ...]) replaces
both terms by the summed squared difference of the features; with LPIPS-normalized VGG16 features that is
LPIPS, the paper's choice.

A generator with mask channels (image + tissue mask) is compared on its image channel(s) only; the mask
comes along with the result. A conditional generator is projected with a given label c: it sets the w
statistics (the mapping network sees c), while the synthesis network itself takes only ws.
"""

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import dataset
import decode
import errors
import metrics
import oasis
import runs

W_AVG_SAMPLES = 10_000                  # z samples for w_avg and w_std (StyleGAN2 appendix D)
W_AVG_SEED = 123                        # their seed, as in the official projector's settings
NOISE_REG_MIN_RES = 8                   # the noise regularizer pools each map down to 8x8, no further
GIF_FRAMES = 50                         # frames of each optimization GIF (one every steps // 50)
GIF_FRAME_MS = 40                       # 25 frames per second


class ProjectionError(errors.ProjectError):
    """A target image or a projected_w.npz that cannot be used, as one line that names the file."""


@dataclass
class Settings:
    """What a projection does; the defaults are the StyleGAN2 paper's (appendix D)."""
    steps: int = 1000                   # optimization steps
    w_plus: bool = False                # one w per synthesis layer (W+) instead of one w for all
    seed: int = 0                       # the initial noise maps and the w noise of every step
    lr: float = 0.1                     # peak learning rate
    lr_rampup: float = 0.05             # share of the steps of the linear ramp-up
    lr_rampdown: float = 0.25           # share of the steps of the cosine ramp-down
    w_noise: float = 0.05               # w noise at t = 0, in units of w_std
    w_noise_ramp: float = 0.75          # share of the steps over which the w noise falls to 0
    noise_reg_weight: float = 1e5       # weight of the noise regularizer
    frame_every: int = 0                # keep the reconstruction at the start, every N steps and at the end


@dataclass
class Projection:
    """One projected slice. Tensors are on the CPU."""
    ws: torch.Tensor                    # [num_ws, w_dim]; the same w in every row unless w_plus
    noise: dict                         # noise buffer name -> float32 [R, R], the optimized noise maps
    image: torch.Tensor                 # uint8 [C, R, R] the reconstruction
    labels: torch.Tensor                # uint8 [R, R] its tissue labels, or None for an image-only generator
    ssim: float                         # SSIM of the uint8 reconstruction against the uint8 target
    psnr: float                         # PSNR (dB) of the same pair, 255 = peak
    frames: list                        # uint8 [C, R, R]: the start, then every frame_every steps and the last


# ----------------------------------------------------------------------------------------------
# Schedules and the noise regularizer (pure functions)

def learning_rate(t: float, lr: float = 0.1, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """lr at progress t in [0, 1): a cosine ramp-down over the last `rampdown` of the steps times a linear
    ramp-up over the first `rampup` (StyleGAN2 appendix D)."""
    down = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (1.0 - t) / rampdown))
    return lr * down * min(1.0, t / rampup)


def w_noise_scale(t: float, w_std: float, factor: float = 0.05, ramp: float = 0.75) -> float:
    """Standard deviation of the noise added to w at progress t: w_std * factor * max(0, 1 - t / ramp)^2."""
    return w_std * factor * max(0.0, 1.0 - t / ramp) ** 2


def noise_regularizer(noises) -> torch.Tensor:
    """Sum over noise maps [R, R] and over their 2x2 average-pooled pyramid down to 8x8 of the squared mean
    product of the map with itself shifted by one pixel in x, and in y (circularly). Zero in expectation for
    white noise; large when the optimizer hides image content in the noise."""
    terms = []
    for noise in noises:
        x = noise[None, None]                                                # [1, 1, R, R]
        while True:
            terms += [(x * x.roll(1, dims=3)).mean() ** 2, (x * x.roll(1, dims=2)).mean() ** 2]
            if x.shape[-1] <= NOISE_REG_MIN_RES:
                break
            x = F.avg_pool2d(x, 2)                                           # [1, 1, R/2, R/2]
    return torch.stack(terms).sum()


@torch.no_grad()
def normalize_noise_(noises) -> None:
    """Each noise map to mean 0, std 1, in place."""
    for noise in noises:
        noise.sub_(noise.mean()).mul_(noise.square().mean().rsqrt())


# ----------------------------------------------------------------------------------------------
# The generator, seen by the projection

@torch.no_grad()
def w_stats(G, c: torch.Tensor = None, samples: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED, batch: int = 1000):
    """(w_avg [1, 1, w_dim], w_std) of `samples` mapped z drawn with np.random.RandomState(seed); w_std =
    sqrt(sum |w - w_avg|^2 / samples), the root-mean-square distance of w from its mean. c [1, c_dim] is the
    label of a conditional G, used for every z."""
    device = next(G.parameters()).device
    z = torch.from_numpy(np.random.RandomState(seed).randn(samples, G.z_dim)).float()       # [S, z_dim]
    w = torch.cat([G.mapping(zb.to(device), None if c is None else c.to(device).expand(len(zb), -1))[:, 0]
                   for zb in z.split(batch)])                                                # [S, w_dim]
    w_avg = w.mean(dim=0, keepdim=True)
    w_std = ((w - w_avg).square().sum() / samples).sqrt().item()
    return w_avg[None], w_std


def noise_names(G) -> list:
    """Names of the synthesis network's const noise buffers, one per SynthesisLayer, coarse to fine."""
    return [name for name, _ in G.synthesis.named_buffers() if name.endswith("noise_const")]


def synthesize(G, ws: torch.Tensor, noise: dict) -> torch.Tensor:
    """ws [N, num_ws, w_dim] -> G's output [N, C (+ K), R, R] with the given noise maps in place of G's const
    noise buffers (G itself is left unchanged)."""
    buffers = {name: n.to(ws.device) for name, n in noise.items()}
    return torch.func.functional_call(G.synthesis, buffers, (ws,), {"noise_mode": "const"})


# ----------------------------------------------------------------------------------------------
# Distances

def ssim_l1(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1 - SSIM) + L1 of images [N, C, R, R] in [-1, 1], both on the [0, 1] scale; summed over N."""
    a, b = (x + 1) / 2, (target + 1) / 2
    return ((1 - metrics.ssim(a, b)) + (a - b).abs().mean(dim=[1, 2, 3])).sum()


class FeatureDistance:
    """Summed squared difference of a feature network's features of x and of the target (computed once).
    The network takes float [N, 3, H, W] in 0..255 (grayscale repeated to three channels)."""

    def __init__(self, model, target: torch.Tensor):
        self.model = model
        with torch.no_grad():
            self.target_features = self.features(target)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1) * 127.5                                                   # [-1, 1] -> [0, 255]
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)                                          # [N, 3, R, R]
        return self.model(x).flatten(1)                                       # [N, D]

    def __call__(self, x: torch.Tensor, target: torch.Tensor = None) -> torch.Tensor:
        return (self.features(x) - self.target_features).square().sum()


def load_feature_net(path, device, resolution: int, option: str = "--distance"):
    """A user-supplied TorchScript feature network, tried on two blank images so that a wrong file fails before
    any work: it must return [2, ...] finite features that depend differentiably on the input. Errors are one
    ValueError line naming option."""
    model = metrics.load_torchscript(path, device, option, "a TorchScript feature network (float [N, 3, H, W] in "
                                                          "0..255 -> features [N, ...])")
    x = torch.zeros(2, 3, resolution, resolution, device=device, requires_grad=True)
    try:
        f = model(x)
    except Exception as e:                                    # a scripted model can raise anything
        raise ValueError(f"{option} {path}: fails on a [2, 3, {resolution}, {resolution}] batch "
                         f"({metrics.error_reason(e)}); give a "
                         f"network that takes float [N, 3, H, W] images in 0..255") from None
    if not torch.is_tensor(f) or f.ndim < 2 or f.shape[0] != 2:
        shape = list(f.shape) if torch.is_tensor(f) else type(f).__name__
        raise ValueError(f"{option} {path}: returned {shape} for 2 images, not features [2, ...]")
    if not torch.isfinite(f).all() or not f.requires_grad:
        raise ValueError(f"{option} {path}: its features are not finite or do not depend differentiably on the "
                         f"image; projection needs their gradient")
    return model


# ----------------------------------------------------------------------------------------------
# The loop

def _uint8(G, out: torch.Tensor):
    """G's output [1, C (+ K), R, R] -> (uint8 image [C, R, R], uint8 labels [R, R] or None) on the CPU."""
    c = G.img_channels
    labels = dataset.mask_labels(out[:, c:])[0].cpu() if G.mask_classes else None
    return dataset.to_uint8(out[0, :c]).cpu(), labels


def reconstruction_scores(image: torch.Tensor, target: torch.Tensor):
    """(SSIM, PSNR in dB) of two uint8 images [C, R, R], as written to disk."""
    a, b = image[None].double() / 255, target[None].double() / 255
    mse = (a - b).square().mean().item()
    return metrics.ssim(a, b).item(), 10 * math.log10(1 / mse) if mse > 0 else math.inf


def project(G, target: torch.Tensor, settings: Settings = None, c: torch.Tensor = None,
            feature_net=None, desc: str = None) -> Projection:
    """Project one uint8 target [C, R, R] (C = G.img_channels, R = G.img_resolution). G is not changed.
    feature_net: a TorchScript feature network for the distance (default (1 - SSIM) + L1). desc: the label of
    a tqdm progress bar (None = no bar)."""
    settings = settings or Settings()
    device = next(G.parameters()).device
    if target.shape != (G.img_channels, G.img_resolution, G.img_resolution):
        raise ValueError(f"target must be [{G.img_channels}, {G.img_resolution}, {G.img_resolution}], "
                         f"got {list(target.shape)}")
    if settings.steps < 1:
        raise ValueError(f"steps must be >= 1, got {settings.steps}")
    goal = dataset.to_float(target[None]).to(device)                          # [1, C, R, R] in [-1, 1]
    distance = FeatureDistance(feature_net, goal) if feature_net is not None else ssim_l1
    w_avg, w_std = w_stats(G, c)
    gen = torch.Generator().manual_seed(settings.seed)                        # CPU draws: the same on any device
    shapes = dict(G.synthesis.named_buffers())
    noise = {name: torch.randn(shapes[name].shape, generator=gen).to(device).requires_grad_()
             for name in noise_names(G)}                                      # each [R, R]
    w = w_avg.repeat(1, G.num_ws if settings.w_plus else 1, 1).to(device).requires_grad_()   # [1, 1 | num_ws, w_dim]
    params = [w, *noise.values()]
    opt = torch.optim.Adam(params, lr=settings.lr, betas=(0.9, 0.999))
    broadcast = lambda v: v.expand(-1, G.num_ws, -1)                          # noqa: E731  [1, num_ws, w_dim]
    frames = []
    if settings.frame_every:
        with torch.no_grad():
            frames.append(_uint8(G, synthesize(G, broadcast(w), noise))[0])         # the start: w_avg
    bar = tqdm(range(settings.steps), desc=desc, unit="step", leave=False, disable=desc is None)
    with torch.enable_grad():
        for step in bar:
            t = step / settings.steps
            for group in opt.param_groups:
                group["lr"] = learning_rate(t, settings.lr, settings.lr_rampup, settings.lr_rampdown)
            sigma = w_noise_scale(t, w_std, settings.w_noise, settings.w_noise_ramp)
            w_noisy = w + torch.randn(w.shape, generator=gen).to(device) * sigma
            x = synthesize(G, broadcast(w_noisy), noise)[:, :G.img_channels]  # image channels only
            dist = distance(x, goal)
            reg = noise_regularizer(noise.values())
            loss = dist + settings.noise_reg_weight * reg
            for p, g in zip(params, torch.autograd.grad(loss, params)):      # G's own parameters get no .grad
                p.grad = g
            opt.step()
            normalize_noise_(noise.values())
            bar.set_postfix(dist=f"{dist.item():.4f}", reg=f"{reg.item():.2e}", refresh=False)
            if settings.frame_every and ((step + 1) % settings.frame_every == 0 or step == settings.steps - 1):
                with torch.no_grad():
                    frames.append(_uint8(G, synthesize(G, broadcast(w), noise))[0])
    bar.close()
    with torch.no_grad():
        ws = broadcast(w.detach())
        image, labels = _uint8(G, synthesize(G, ws, noise))
    ssim, psnr = reconstruction_scores(image, target)
    return Projection(ws=ws[0].cpu(), noise={k: v.detach().cpu() for k, v in noise.items()}, image=image,
                      labels=labels, ssim=ssim, psnr=psnr, frames=frames)


@torch.no_grad()
def from_ws(G, ws: torch.Tensor, noise: dict = None, noise_mode: str = "const"):
    """Saved ws [N, num_ws, w_dim] (and their noise maps, name -> [N, R, R]) -> (uint8 images [N, C, R, R], labels
    [N, R, R] or None), one image at a time as in `project`, so a projection is reproduced exactly. Without noise
    maps (or with noise_mode random / none) G's own noise is used."""
    device = next(G.parameters()).device
    images, labels = [], []
    for i in range(len(ws)):
        w = ws[i:i + 1].to(device)
        if noise is not None and noise_mode == "const":
            out = synthesize(G, w, {name: n[i] for name, n in noise.items()})
        else:
            out = G.synthesis(w, noise_mode=noise_mode)
        image, label = _uint8(G, out)
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.stack(labels) if G.mask_classes else None


# ----------------------------------------------------------------------------------------------
# Files: `predict.py project` and `predict.py from_w`

def image_array(image: torch.Tensor) -> np.ndarray:
    """uint8 [C, H, W] -> [H, W] (C = 1) or [H, W, C], as runs.save_png takes it."""
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def save_gif(frames: torch.Tensor, path: Path) -> None:
    """uint8 frames [T, C, H, W] -> an endless GIF, written atomically."""
    images = [Image.fromarray(image_array(f)) for f in frames]
    runs.atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                       duration=GIF_FRAME_MS, loop=0))


def remove_stale(outdir: Path, prefix: str, count: int) -> None:
    """An earlier, longer run's <prefix><NNNN>.png / .gif / _seg.png files (index >= count) would mix in."""
    for old in outdir.glob(f"{prefix}*"):
        m = re.fullmatch(rf"{prefix}(\d{{4,}})(_seg)?\.(png|gif)", old.name)
        if m and int(m.group(1)) >= count:
            old.unlink()


def read_targets(paths, cfg):
    """The files to project (folders searched recursively, sorted) decoded as cfg's training data was: (paths,
    uint8 [N, C, R, R], how many were resized). Every file is read before any projection; errors name the file."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            if oasis.is_oasis_layout(path):
                raise ProjectionError(f"project {path}: an OASIS folder (images and masks); give one split's image "
                                      f"folder, e.g. {path / (oasis.OASIS_PREFIX + 'validate')}")
            found = dataset.list_images(path)
            if not found:
                raise ProjectionError(f"project {path}: no images ({', '.join(dataset.IMAGE_EXTS)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ProjectionError(f"project {path}: no such file or folder")
    stats = decode.DecodeStats()
    images = [torch.from_numpy(decode.decode_image(f, cfg.resolution, cfg.img_channels, cfg.fit, stats).copy())
              for f in files]
    return files, torch.stack(images), stats.resized


def _savez(path, arrays: dict) -> None:
    with open(path, "wb") as f:                             # a file object: np.savez would append .npz to a name
        np.savez(f, **arrays)


def save_projection_figure(targets, results, names, path: Path) -> None:
    """Targets above their reconstructions (and masks), each titled with its name and SSIM."""
    plt = runs.pyplot()
    rows = 3 if results[0].labels is not None else 2
    fig, axes = plt.subplots(rows, len(results), figsize=(1.6 * len(results), 1.75 * rows + 0.4), squeeze=False)
    for j, (target, r) in enumerate(zip(targets, results)):
        tiles = [(target, Path(names[j]).name.replace(".nii.png", "")[-18:]), (r.image, f"SSIM {r.ssim:.3f}")]
        if r.labels is not None:
            tiles.append((dataset.mask_to_levels(r.labels[None])[0], "mask"))
        for ax, (image, title) in zip(axes[:, j], tiles):
            ax.imshow(image_array(image), cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"projection: real slices (top), reconstructions (below); mean SSIM "
                 f"{np.mean([r.ssim for r in results]):.3f}", fontsize=8)
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=100)


def write_projections(G, cfg, paths, settings: Settings, c, outdir: Path, about: dict, distance=None) -> str:
    """Project every image of paths (files or folders) with settings: projection<NNNN>.png (target |
    reconstruction | mask) and .gif (the optimization), projections.png, projection.json (SSIM and PSNR of each
    reconstruction, and the means) and projected_w.npz (w [N, num_ws, w_dim], names, and the optimized noise
    maps noise.<layer> [N, R, R]). distance: a TorchScript feature network file, else (1 - SSIM) + L1."""
    files, targets, resized = read_targets(paths, cfg)
    device = next(G.parameters()).device
    try:
        net = load_feature_net(distance, device, G.img_resolution) if distance else None
    except ValueError as e:
        raise ProjectionError(str(e)) from None
    if resized:
        print(f"{resized} of {len(files)} image(s) resized to {G.img_resolution}x{G.img_resolution} "
              f"(--fit {cfg.fit}, Lanczos)", file=sys.stderr)
    remove_stale(outdir, "projection", len(files))
    results = []
    for i, (path, target) in enumerate(zip(files, targets)):
        r = project(G, target, settings, c, net, desc=f"project {i + 1}/{len(files)} {path.name}")
        tiles = [target, r.image] + ([dataset.mask_to_levels(r.labels[None])[0].expand_as(target)]
                                     if r.labels is not None else [])
        runs.save_png(image_array(torch.cat(tiles, dim=2)), outdir / f"projection{i:04d}.png")
        save_gif(torch.stack([torch.cat([target, f], dim=2) for f in r.frames]), outdir / f"projection{i:04d}.gif")
        results.append(r)
        print(f"{i:4d}  SSIM {r.ssim:.4f}  PSNR {r.psnr:6.2f} dB  {path}")
    names = [str(f) for f in files]
    arrays = {"w": torch.stack([r.ws for r in results]).numpy(), "names": np.array(names)}
    arrays.update({f"noise.{k}": torch.stack([r.noise[k] for r in results]).numpy() for k in results[0].noise})
    runs.atomic_write(outdir / "projected_w.npz", lambda tmp: _savez(tmp, arrays))
    save_projection_figure(targets, results, names, outdir / "projections.png")
    mean = lambda key: float(np.mean([getattr(r, key) for r in results]))             # noqa: E731
    summary = {**about, "steps": settings.steps, "w_plus": settings.w_plus, "seed": settings.seed,
               "distance": distance or "(1 - SSIM) + L1", "label": None if c is None else c[0].tolist(),
               "resized": resized, "ssim_mean": mean("ssim"), "psnr_mean": mean("psnr"),
               "images": [{"name": n, "file": f"projection{i:04d}.png", "ssim": r.ssim, "psnr": r.psnr}
                          for i, (n, r) in enumerate(zip(names, results))]}
    runs.write_text(outdir / "projection.json", json.dumps(summary, indent=1) + "\n")
    print(f"mean  SSIM {summary['ssim_mean']:.4f}  PSNR {summary['psnr_mean']:6.2f} dB  ({len(files)} images, "
          f"{settings.steps} steps, {'W+' if settings.w_plus else 'w'})")
    return (f"{len(files)} projections projection0000.png ... (.png, .gif), projections.png, projection.json and "
            f"projected_w.npz")


def read_projected_w(path, G):
    """(ws [N, num_ws, w_dim], noise maps {name: [N, R, R]} or None) from a projected_w.npz; every problem is one
    ProjectionError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ProjectionError(f"from_w {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise ProjectionError(f"from_w {path}: not a readable .npz file ({e}); give the projected_w.npz that "
                              f"`predict.py project` wrote") from None
    w = arrays.get("w")
    want = (G.num_ws, G.w_dim)
    if w is None or w.ndim != 3 or w.shape[1:] != want or len(w) == 0:
        got = "no array 'w'" if w is None else f"w of shape {list(w.shape)}"
        raise ProjectionError(f"from_w {path}: {got}; this generator takes w of shape [N, {want[0]}, {want[1]}] "
                              f"(N, num_ws, w_dim): was it projected with another model?")
    shapes = dict(G.synthesis.named_buffers())
    noise = {k[len("noise."):]: v for k, v in arrays.items() if k.startswith("noise.")}
    if noise and (sorted(noise) != sorted(noise_names(G)) or
                  any(v.shape != (len(w), *shapes[k].shape) for k, v in noise.items())):
        raise ProjectionError(f"from_w {path}: its noise maps do not match this generator's layers; was it "
                              f"projected with another model?")
    if not all(np.isfinite(a).all() for a in [w, *noise.values()]):
        raise ProjectionError(f"from_w {path}: holds NaN or inf")
    return torch.from_numpy(w).float(), {k: torch.from_numpy(v).float() for k, v in noise.items()} or None


def write_from_projected_w(G, path, outdir: Path, noise_mode: str) -> str:
    """projected<NNNN>.png (and with masks _seg.png) from a projected_w.npz: the reconstructions, bit for bit."""
    ws, noise = read_projected_w(path, G)
    images, labels = from_ws(G, ws, noise, noise_mode)
    remove_stale(outdir, "projected", len(ws))
    for i, image in enumerate(images):
        runs.save_png(image_array(image), outdir / f"projected{i:04d}.png")
        if labels is not None:
            runs.save_png(image_array(dataset.mask_to_levels(labels[i:i + 1])[0]),
                          outdir / f"projected{i:04d}_seg.png")
    source = "its saved noise maps" if noise is not None and noise_mode == "const" else f"--noise_mode {noise_mode}"
    return f"{len(ws)} images projected0000.png ... from {path} ({source})"
