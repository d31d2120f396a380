"""Adaptive discriminator augmentation: the augmentation pipe that every image shown to D passes through.

Owns the transforms (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data",
sec. 2 and appendix B), batched on the device and differentiable so G's gradients flow through them.
Does not own the adaptation of p (train.py measures D's outputs and sets `pipe.p`).

Groups, each transform applied to each image independently with probability p:
  b  pixel blitting: x-flip, 90-degree rotations, integer translation            (exact index operations)
  g  general geometric: isotropic scale, rotation, anisotropic scale, fractional translation
  c  colour: brightness, contrast, luma flip, hue rotation, saturation (hue and saturation: RGB only)
  f  image-space filtering: random gains of four frequency bands
  n  additive Gaussian noise
  o  cutout: a square of half the image size set to zero
Geometric resampling pads by reflection and runs at 2x resolution between windowed-sinc low-pass
filters, so the transforms do not leak into the generator for p below about 0.8.
Image + mask pairs (mask_channels > 0, the mask's channels after the image's): groups b and g move image
and mask together with the same transform; c, f, n and o change the image channels only.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ops import FirSpec, conv2d, fir2d           # fast higher-order gradients (R1)

GROUPS = {
    "b": ("xflip", "rotate90", "xint"),
    "g": ("scale", "rotate", "aniso", "xfrac"),
    "c": ("brightness", "contrast", "lumaflip", "hue", "saturation"),
    "f": ("imgfilter",),
    "n": ("noise",),
    "o": ("cutout",),
}


def windowed_sinc(taps: int, cutoff: float) -> torch.Tensor:
    """Symmetric low-pass FIR filter: sinc with cutoff in cycles/sample (0.5 = Nyquist), Blackman
    window, unit DC gain. [taps]"""
    n = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    h = 2 * cutoff * torch.sinc(2 * cutoff * n)
    window = torch.signal.windows.blackman(taps, sym=True, dtype=torch.float64)
    h = h * window
    return (h / h.sum()).float()


def _sep_conv(x: torch.Tensor, f: torch.Tensor, stride: int = 1, transpose: bool = False, pad: int = 0):
    """Apply the 1D filter f along H and W of every channel: as conv2d (stride) or conv_transpose2d
    (stride 2, gain 2 per axis, cropping pad), written as ops.fir2d's slice sums (the [1, 1, 1, L] and
    [1, 1, L, 1] convolution form is the reference in tests/reference.py)."""
    if transpose:
        taps = f.flip(0) * 2
        return fir2d(x, taps, taps, FirSpec.transposed(f.shape[0], stride=2, padding=pad))
    return fir2d(x, f, f, FirSpec(1, stride, 0, 0))


def _reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Indices folded into [0, size) by mirror reflection without repeating the edge."""
    period = 2 * (size - 1)
    i = i.remainder(period)
    return torch.where(i >= size, period - i, i)


def _matrix(rows) -> torch.Tensor:
    """Stack per-sample rows of python/tensor entries into [N, D, D]."""
    return torch.stack([torch.stack(list(r), dim=-1) for r in rows], dim=-2)


class AugmentPipe(nn.Module):
    """pipe(images) -> augmented images of the same shape; pipe.p is the probability of each transform."""

    def __init__(self,
                 img_channels: int = 1,         # 1 (hue and saturation are skipped) or 3
                 pipeline: str = "bgc",         # transform groups, letters from GROUPS
                 p: float = 0.0,                # probability of each transform per image
                 xint_max: float = 0.125,       # integer translation, fraction of the image size
                 scale_std: float = 0.2,        # isotropic scale, log2 standard deviation
                 rotate_max: float = 1.0,       # rotation, fraction of a full turn either way
                 aniso_std: float = 0.2,        # anisotropic scale, log2 standard deviation
                 xfrac_std: float = 0.125,      # fractional translation, standard deviation (image sizes)
                 brightness_std: float = 0.2,   # added brightness, standard deviation
                 contrast_std: float = 0.5,     # contrast, log2 standard deviation
                 hue_max: float = 1.0,          # hue rotation, fraction of a full turn either way
                 saturation_std: float = 1.0,   # saturation, log2 standard deviation
                 imgfilter_std: float = 1.0,    # band gains, log2 standard deviation
                 noise_std: float = 0.1,        # additive noise: sigma ~ |N(0, noise_std)|
                 cutout_size: float = 0.5,      # cutout square side, fraction of the image size
                 mask_channels: int = 0):       # mask channels after the image's: moved, never recoloured
        super().__init__()
        unknown = set(pipeline) - set(GROUPS)
        if unknown or not pipeline:
            raise ValueError(f"augmentation pipeline must use the letters {''.join(GROUPS)} "
                             f"(e.g. bgc), got {pipeline!r}")
        if img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {img_channels}")
        self.img_channels, self.pipeline, self.p = img_channels, pipeline, float(p)
        self.mask_channels = mask_channels
        self.enabled = [t for g in pipeline for t in GROUPS[g]
                        if not (img_channels == 1 and t in ("hue", "saturation"))]
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std, self.hue_max = brightness_std, contrast_std, hue_max
        self.saturation_std, self.imgfilter_std = saturation_std, imgfilter_std
        self.noise_std, self.cutout_size = noise_std, cutout_size
        self.register_buffer("lowpass", windowed_sinc(12, 0.25), persistent=False)  # half band at 2x rate

    def extra_repr(self) -> str:
        return f"pipeline={self.pipeline}, p={self.p:.3f}, transforms={','.join(self.enabled)}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        channels = self.img_channels + self.mask_channels
        if images.ndim != 4 or images.shape[1] != channels or images.shape[2] != images.shape[3]:
            raise ValueError(f"AugmentPipe expects square images [N, {channels}, R, R], got {list(images.shape)}")
        if self.p <= 0:
            return images
        x = self._geometric(self._blit(images))                 # image and mask channels move together
        if self.mask_channels:
            x, mask = x[:, :self.img_channels], x[:, self.img_channels:]
        x = self._color(x)
        if "imgfilter" in self.enabled:
            x = self._imgfilter(x)
        if "noise" in self.enabled:
            sigma = torch.randn(x.shape[0], device=x.device).abs() * self.noise_std * self._chosen(x, self.p)
            x = x + torch.randn_like(x) * sigma.to(x.dtype)[:, None, None, None]
        if "cutout" in self.enabled:
            x = self._cutout(x)
        return torch.cat([x, mask], dim=1) if self.mask_channels else x

    def _chosen(self, x: torch.Tensor, prob: float) -> torch.Tensor:
        """1.0 for the images a transform is applied to (each with probability prob), else 0.0. [N]"""
        return (torch.rand(x.shape[0], device=x.device) < prob).float()

    # -- b: pixel blitting (exact) -----------------------------------------------------------

    def _blit(self, x: torch.Tensor) -> torch.Tensor:
        n, _, size, _ = x.shape
        if "xflip" in self.enabled:
            # Chosen with probability p, then flipped with probability 1/2, as the official pipe does: at
            # p = 1 half of the images are mirrored (Karras et al. 2020, ADA appendix B; lumaflip likewise).
            flip = (torch.randint(0, 2, (n,), device=x.device) * self._chosen(x, self.p)).bool()[:, None, None, None]
            x = torch.where(flip, x.flip(3), x)
        if "rotate90" in self.enabled:
            k = (torch.randint(0, 4, (n,), device=x.device) * self._chosen(x, self.p)).long()
            out = x
            for r in (1, 2, 3):
                out = torch.where((k == r)[:, None, None, None], torch.rot90(x, r, dims=(2, 3)), out)
            x = out
        if "xint" in self.enabled:
            shift = (torch.rand(n, 2, device=x.device) * 2 - 1) * self.xint_max * self._chosen(x, self.p)[:, None]
            shift = (shift * size).round().long()                                     # [N, 2] pixels (x, y)
            grid = torch.arange(size, device=x.device)
            ix = _reflect_index(grid[None] - shift[:, :1], size)                     # [N, W]
            iy = _reflect_index(grid[None] - shift[:, 1:], size)                     # [N, H]
            x = x.gather(3, ix[:, None, None, :].expand_as(x))
            x = x.gather(2, iy[:, None, :, None].expand_as(x))
        return x

    # -- g: general geometric transforms, one resampling pass ------------------------------------

    def _geometric(self, x: torch.Tensor) -> torch.Tensor:
        n, device = x.shape[0], x.device
        eye = torch.eye(3, device=device).expand(n, 3, 3)
        G_inv = eye                                   # output coords -> input coords, in image sizes
        one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
        if "scale" in self.enabled:
            s = torch.exp2(torch.randn(n, device=device) * self.scale_std * self._chosen(x, self.p))
            G_inv = G_inv @ _matrix([[1 / s, zero, zero], [zero, 1 / s, zero], [zero, zero, one]])
        p_rot = 1 - math.sqrt(max(1 - self.p, 0))     # applied twice: P(any rotation) = p
        for stage in ("pre", "post"):
            if "rotate" in self.enabled:
                theta = (torch.rand(n, device=device) * 2 - 1) * math.pi * self.rotate_max * self._chosen(x, p_rot)
                c, s = torch.cos(-theta), torch.sin(-theta)
                G_inv = G_inv @ _matrix([[c, -s, zero], [s, c, zero], [zero, zero, one]])
            if stage == "pre" and "aniso" in self.enabled:
                s = torch.exp2(torch.randn(n, device=device) * self.aniso_std * self._chosen(x, self.p))
                G_inv = G_inv @ _matrix([[1 / s, zero, zero], [zero, s, zero], [zero, zero, one]])
        if "xfrac" in self.enabled:
            t = torch.randn(n, 2, device=device) * self.xfrac_std * self._chosen(x, self.p)[:, None]
            G_inv = G_inv @ _matrix([[one, zero, -t[:, 0]], [zero, one, -t[:, 1]], [zero, zero, one]])
        if G_inv is eye:
            return x
        moved = (G_inv - eye).abs().flatten(1).amax(dim=1) > 0
        idx = moved.nonzero().flatten()
        if idx.numel() == 0:
            return x
        return x.index_copy(0, idx, resample(x[idx], G_inv[idx], self.lowpass))

    # -- c: colour ------------------------------------------------------------------------------

    def _color(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        names = [t for t in ("brightness", "contrast", "lumaflip", "hue", "saturation") if t in self.enabled]
        if not names:
            return x
        device, d = x.device, c + 1
        v = torch.zeros(d, device=device)
        v[:c] = 1 / math.sqrt(c)                                   # the luma axis
        vv = torch.outer(v, v)
        M = torch.eye(d, device=device).repeat(n, 1, 1)            # [N, D, D] acting on [colour, 1]
        eye = torch.eye(d, device=device)
        if "brightness" in names:
            b = torch.randn(n, device=device) * self.brightness_std * self._chosen(x, self.p)
            T = eye.repeat(n, 1, 1)
            T[:, :c, c] = b[:, None]
            M = T @ M
        if "contrast" in names:
            s = torch.exp2(torch.randn(n, device=device) * self.contrast_std * self._chosen(x, self.p))
            S = eye.repeat(n, 1, 1)
            S[:, range(c), range(c)] = s[:, None]
            M = S @ M
        if "lumaflip" in names:
            i = torch.randint(0, 2, (n,), device=device) * self._chosen(x, self.p)
            M = (eye - 2 * vv * i[:, None, None]) @ M
        if "hue" in names:
            theta = (torch.rand(n, device=device) * 2 - 1) * math.pi * self.hue_max * self._chosen(x, self.p)
            M = _rotate_about(v[:3], theta, d) @ M
        if "saturation" in names:
            s = torch.exp2(torch.randn(n, device=device) * self.saturation_std * self._chosen(x, self.p))
            M = (vv + (eye - vv) * s[:, None, None]) @ M
        M = M.to(x.dtype)
        return torch.einsum("nij,njhw->nihw", M[:, :c, :c], x) + M[:, :c, c, None, None]

    # -- f: image-space filtering -----------------------------------------------------------------

    def _imgfilter(self, x: torch.Tensor) -> torch.Tensor:
        """Random gains for four frequency bands (0-1/16, 1/16-1/8, 1/8-1/4, 1/4-1/2 cycles/pixel),
        normalized so the expected image power is kept, applied as one separable filter per image."""
        n, c, size, _ = x.shape
        taps = 31
        cutoffs = [1 / 16, 1 / 8, 1 / 4]
        lows = [windowed_sinc(taps, fc).to(x.device) for fc in cutoffs]
        delta = torch.zeros(taps, device=x.device)
        delta[taps // 2] = 1
        bands = torch.stack([lows[0], lows[1] - lows[0], lows[2] - lows[1], delta - lows[2]])  # [4, taps]
        expected_power = torch.tensor([10, 1, 1, 1], device=x.device, dtype=torch.float32) / 13
        g = torch.exp2(torch.randn(n, 4, device=x.device) * self.imgfilter_std * self._chosen(x, self.p)[:, None])
        g = g / (expected_power * g.square()).sum(dim=1, keepdim=True).sqrt()
        h = (g @ bands).to(x.dtype)                                                # [N, taps]
        pad = taps // 2
        y = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, n * c, size + 2 * pad, size + 2 * pad)
        k = h.repeat_interleave(c, dim=0)                                          # [N*C, taps]
        y = conv2d(y, k[:, None, None, :], groups=n * c)
        y = conv2d(y, k[:, None, :, None], groups=n * c)
        return y.reshape(n, c, size, size)

    # -- o: cutout --------------------------------------------------------------------------------

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        n, _, size, _ = x.shape
        chosen = self._chosen(x, self.p)
        centre = torch.rand(n, 2, device=x.device)
        coords = (torch.arange(size, device=x.device) + 0.5) / size
        inside_x = (coords[None, :] - centre[:, :1]).abs() < self.cutout_size / 2                  # [N, W]
        inside_y = (coords[None, :] - centre[:, 1:]).abs() < self.cutout_size / 2                  # [N, H]
        hole = inside_y[:, :, None] & inside_x[:, None, :] & (chosen > 0)[:, None, None]          # [N, H, W]
        return x * (~hole)[:, None].to(x.dtype)


def _rotate_about(axis: torch.Tensor, theta: torch.Tensor, d: int) -> torch.Tensor:
    """Rodrigues rotation by theta [N] about a unit 3-vector axis, embedded in [N, d, d]."""
    n = theta.shape[0]
    ax, ay, az = axis.tolist()
    K = torch.tensor([[0, -az, ay], [az, 0, -ax], [-ay, ax, 0]], device=theta.device)
    R = torch.eye(3, device=theta.device) + torch.sin(theta)[:, None, None] * K \
        + (1 - torch.cos(theta))[:, None, None] * (K @ K)
    out = torch.eye(d, device=theta.device).repeat(n, 1, 1)
    out[:, :3, :3] = R
    return out


def resample(x: torch.Tensor, G_inv: torch.Tensor, lowpass: torch.Tensor) -> torch.Tensor:
    """Apply per-image affine maps (G_inv: output -> input, in image-size units about the centre)
    without aliasing: reflect-pad, upsample 2x (windowed sinc), sample bilinearly at 2x, filter and
    decimate back. [N, C, S, S] -> [N, C, S, S]"""
    n, c, size, _ = x.shape
    taps = lowpass.shape[0]
    # Where do the output corners (plus the downsampling filter's reach) land in the input?
    reach = 0.5 + (taps / 2) / (2 * size)
    corners = torch.tensor([[-reach, -reach, 1], [reach, -reach, 1], [-reach, reach, 1], [reach, reach, 1]],
                           device=x.device, dtype=G_inv.dtype)
    extent = (G_inv[:, :2, :] @ corners.T).abs().max().item()                      # image sizes from centre
    pad = int(min(size - 1, max(0, math.ceil((extent - 0.5) * size) + taps // 2 + 1)))
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
    up = _sep_conv(xp, lowpass, transpose=True, pad=(taps - 2) // 2)               # [N, C, 2(S+2P), ...]
    out2 = 2 * size + taps - 2                                                     # samples before decimation
    j = torch.arange(out2, device=x.device, dtype=G_inv.dtype)
    u = ((j + 0.5) / 2 - (taps - 2) / 4) / size - 0.5                              # output coords, image sizes
    uy, ux = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([ux, uy, torch.ones_like(ux)], dim=-1).reshape(-1, 3)        # [M, 3]
    src = (G_inv[:, :2, :] @ pts.T).transpose(1, 2)                                # [N, M, 2] input coords
    span = size + 2 * pad                                                           # padded size in pixels
    grid = (src * size + size / 2 + pad) / span * 2 - 1                            # align_corners=False
    grid = grid.reshape(n, out2, out2, 2).to(x.dtype)
    y = F.grid_sample(up, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _sep_conv(y, lowpass, stride=2)                                          # [N, C, S, S]
