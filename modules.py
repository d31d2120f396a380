"""StyleGAN2 networks: the generator (mapping + "skip" synthesis) and the "resnet" discriminator.

Owns the nn.Module networks and their layers: equalized-learning-rate dense and conv layers, the mapping
network with truncation and label conditioning, the modulated synthesis layers with per-layer noise, the
skip generator, the residual discriminator with minibatch standard deviation, and the parameter summary
(count_params, summary_rows; printed by `python bench.py summary`). Does not own the tensor operations
the layers compose (ops.py: convolutions with their own gradients, FIR resampling, modulated_conv2d),
nor losses, regularizers, optimizers or data (losses.py, train.py, augment.py, dataset.py).

References: Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2)
and Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data" (StyleGAN2-ADA),
whose official code fixes the layer sizes reproduced here.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import config
from ops import (LRELU_GAIN, LRELU_SLOPE, bias_act, conv2d_resample, fir_kernel, minibatch_stddev,
                 modulated_conv2d, normalize_2nd_moment, upsample2d)

NOISE_MODES = ("random", "const", "none")


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: min(channel_base // r, channel_max)."""
    return min(channel_base // resolution, channel_max)


def check_activation(activation: str) -> str:
    if activation not in ("linear", "lrelu"):
        raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
    return activation


MASK_ENCODINGS = config.MASK_ENCODINGS
MASK_HEADS = config.MASK_HEADS


def mask_channel_count(mask_classes: int, mask_encoding: str) -> int:
    """Channels a mask of mask_classes classes takes: one per class ("onehot", "softmax"), one holding the class level
    ("level"), or two, brain against background and the tissue level ("split", "split_dark"); 0 without a mask."""
    if not isinstance(mask_classes, int) or mask_classes < 0 or mask_classes == 1:
        raise ValueError(f"mask_classes must be 0 (image only) or >= 2 classes, got {mask_classes!r}")
    if mask_encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask_encoding must be one of {MASK_ENCODINGS}, got {mask_encoding!r}")
    if not mask_classes:
        return 0
    if mask_encoding in config.SPLIT_ENCODINGS:
        if mask_classes < 3:
            raise ValueError(f"mask_encoding {mask_encoding} needs background and >= 2 tissue classes, got {mask_classes}")
        return 2
    return mask_classes if mask_encoding in config.CLASS_ENCODINGS else 1


def check_network_size(img_resolution: int, img_channels: int, channel_base: int, channel_max: int) -> int:
    """Validate the size arguments shared by G and D; return log2(img_resolution)."""
    log2 = config.check_resolution(img_resolution, "img_resolution", error=ValueError)
    if not isinstance(img_channels, int) or img_channels < 1:
        raise ValueError(f"img_channels must be a positive integer (1 for MRI, 3 for RGB), got {img_channels!r}")
    if channel_max < 1 or channels_at(img_resolution, channel_base, channel_max) < 1:
        raise ValueError(f"channel_base={channel_base}, channel_max={channel_max} give no channels at "
                         f"{img_resolution} px; use channel_base >= {img_resolution} and channel_max >= 1")
    return log2


# ----------------------------------------------------------------------------------------------
# Equalized-learning-rate layers (ProGAN sec. 4.1)

class FullyConnectedLayer(nn.Module):
    """Dense layer with equalized learning rate: weight stored N(0, 1/lr_mul^2) (std 1/lr_mul),
    scaled at run time by lr_mul / sqrt(in_features); bias scaled by lr_mul."""

    def __init__(self,
                 in_features: int,              # input width
                 out_features: int,             # output width
                 bias: bool = True,             # add a learned bias
                 bias_init: float = 0.0,        # initial bias value (1 for style affines)
                 activation: str = "linear",    # "linear" or "lrelu"
                 lr_mul: float = 1.0):          # learning-rate multiplier (0.01 in the mapping network)
        super().__init__()
        self.activation = check_activation(activation)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "lrelu":
            # LRELU_GAIN * lrelu(x w^T + b) = lrelu(x (g w)^T + g b): the leaky ReLU is positively homogeneous.
            b = self.bias * (self.bias_gain * LRELU_GAIN) if self.bias is not None else None
            return F.leaky_relu(F.linear(x, self.weight * (self.weight_gain * LRELU_GAIN), b), LRELU_SLOPE)
        b = self.bias * self.bias_gain if self.bias is not None else None
        return F.linear(x, self.weight * self.weight_gain, b)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, act={self.activation}"


class Conv2dLayer(nn.Module):
    """Conv layer with equalized learning rate, optional x2 FIR downsampling and activation clamp."""

    def __init__(self,
                 in_channels: int,              # input feature maps
                 out_channels: int,             # output feature maps
                 kernel_size: int,              # odd kernel width (1 or 3)
                 bias: bool = True,             # add a learned bias
                 activation: str = "linear",    # "linear" or "lrelu"
                 down: int = 1,                 # 2 = halve the resolution (FIR blur + stride 2)
                 gain: float = 1.0,             # extra output gain (sqrt(0.5) on the resnet branches)
                 conv_clamp: float = None,      # clamp |activations| to this (times gain); None = off
                 lr_mul: float = 1.0):          # learning-rate multiplier
        super().__init__()
        self.activation, self.down = check_activation(activation), down
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_channels * kernel_size ** 2)
        self.bias_gain = lr_mul
        self.act_gain = (LRELU_GAIN if activation == "lrelu" else 1.0) * gain
        self.act_clamp = conv_clamp * gain if conv_clamp is not None else None
        self.register_buffer("resample_filter", fir_kernel(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # act_gain * lrelu(conv(x, w) + b) = lrelu(conv(x, act_gain w) + act_gain b) (act_gain > 0): the
        # gain rides on the weights, the bias on the convolution, the leaky ReLU runs in place on its
        # output (which no backward needs). One pass over the activations instead of three.
        g = self.act_gain
        b = (self.bias * (self.bias_gain * g)).to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(x, (self.weight * (self.weight_gain * g)).to(x.dtype), self.resample_filter,
                            down=self.down, bias=b)
        if self.activation == "lrelu":     # in place, unless x is a view (the 1x1 conv's): autograd would copy
            inplace = not torch.compiler.is_compiling() and not x._is_view()   # the compiler fuses it anyway
            x = F.leaky_relu_(x, LRELU_SLOPE) if inplace else F.leaky_relu(x, LRELU_SLOPE)
        return x.clamp(-self.act_clamp, self.act_clamp) if self.act_clamp is not None else x

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"in={i}, out={o}, k={k}, down={self.down}, act={self.activation}"


# ----------------------------------------------------------------------------------------------
# Generator

LABEL_ENCODINGS = ("none", "fourier")
FOURIER_FREQUENCIES = 4                 # label value v -> sin / cos of pi * 2^j * v, j = 0..3


def label_features(c: torch.Tensor, encoding: str, lo: torch.Tensor = None, hi: torch.Tensor = None) -> torch.Tensor:
    """The embedding's input for labels c [N, c_dim]: c itself ("none", the official form), or per value v the
    Fourier features sin(pi 2^j u), cos(pi 2^j u), j < FOURIER_FREQUENCIES, of u = (v - lo) / (hi - lo)
    ("fourier"; lo, hi [c_dim] default 0 and 1) [N, 2 * 4 * c_dim].
    Why: the embedding is normalized to unit second moment, which divides a single value's embedding v * e + b
    by its own size: only the bias b (which starts at 0) keeps positions such as 0.3 and 0.9 apart. The
    features have a constant norm and a direction that moves with v (docs/conditioning.md)."""
    if encoding == "none":
        return c
    if lo is not None:
        c = (c - lo) / (hi - lo)
    freqs = math.pi * 2.0 ** torch.arange(FOURIER_FREQUENCIES, device=c.device, dtype=c.dtype)
    angles = (c[:, :, None] * freqs).flatten(1)                                     # [N, c_dim * 4]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def label_width(c_dim: int, encoding: str) -> int:
    """The embedding's input width for c_dim label values under an encoding."""
    if encoding not in LABEL_ENCODINGS:
        raise ValueError(f"label encoding must be one of {', '.join(LABEL_ENCODINGS)}, got {encoding!r}")
    return c_dim * 2 * FOURIER_FREQUENCIES if encoding == "fourier" else c_dim


EMBED_LR_MUL = 1.0                      # learning-rate multiplier of the label embedding (official: 1)


class MappingNetwork(nn.Module):
    """(z, c) -> w: 2nd-moment normalization, `num_layers` lrelu FC layers (lr_mul 0.01), broadcast to
    num_ws copies, running mean w_avg for truncation (StyleGAN sec. 2 and 4). With a label (c_dim > 0) the
    first layer reads concat(normalize(z), normalize(embed(c))), embed a linear FC c_dim -> w_dim at lr 1
    (StyleGAN2-ADA's conditional mapping; label_encoding "fourier" feeds embed Fourier features of c instead,
    see label_features). With z_dim 0 and num_ws None it is D's label mapping: c -> [N, w_dim]."""

    def __init__(self,
                 z_dim: int,                    # latent z width (0: label only, D's label mapping)
                 w_dim: int,                    # intermediate latent w width
                 num_ws: int,                   # copies of w the synthesis network consumes; None = return w
                 num_layers: int = 8,           # FC layers (8 in the paper, 2 in the official "auto")
                 lr_mul: float = 0.01,          # learning-rate multiplier of every FC layer
                 w_avg_beta: float = 0.995,     # decay of the w_avg running mean (StyleGAN sec. 4); None = none
                 c_dim: int = 0,                # label width (0 = unconditional)
                 label_encoding: str = "none",  # what embed reads: the label ("none") or its "fourier" features
                 label_range=None):             # "fourier": (lo, hi) per label mapped to [0, 1]; None = as given
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"mapping_layers must be >= 1, got {num_layers}")
        if c_dim < 0 or z_dim < 0 or z_dim + c_dim == 0:
            raise ValueError(f"the mapping network needs z_dim > 0 or c_dim > 0, got z_dim={z_dim}, c_dim={c_dim}")
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta, self.c_dim = z_dim, w_dim, num_ws, w_avg_beta, c_dim
        self.label_encoding, self.label_range = label_encoding, None
        if label_range is not None:
            if len(label_range) != c_dim or any(not hi > lo for lo, hi in label_range):
                raise ValueError(f"label_range needs (lo, hi) with hi > lo for each of the {c_dim} labels, "
                                 f"got {label_range!r}")
            self.label_range = [tuple(map(float, r)) for r in label_range]
            # Set from the data and stored in the run's config, so not part of the state dict.
            self.register_buffer("label_lo", torch.tensor([r[0] for r in self.label_range]), persistent=False)
            self.register_buffer("label_hi", torch.tensor([r[1] for r in self.label_range]), persistent=False)
        # The label embedding is a plain FC layer at learning-rate multiplier 1; only the mapping's FC layers
        # learn at lr_mul (official StyleGAN2-ADA networks.py, MappingNetwork.embed).
        self.embed = (FullyConnectedLayer(label_width(c_dim, label_encoding), w_dim, lr_mul=EMBED_LR_MUL)
                      if c_dim else None)
        widths = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnectedLayer(widths[i], widths[i + 1], activation="lrelu", lr_mul=lr_mul)
            for i in range(num_layers))
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def _input(self, z, c) -> torch.Tensor:
        """concat(normalize(z), normalize(embed(c))) in float32, checking both shapes. [N, z_dim (+ w_dim)]"""
        parts = []
        dtype = self.layers[0].weight.dtype
        if self.z_dim:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must have shape [N, {self.z_dim}] (z_dim={self.z_dim}), got "
                                 f"{None if z is None else list(z.shape)}")
            parts.append(normalize_2nd_moment(z.to(dtype)))
        if self.c_dim:
            n = z.shape[0] if z is not None else (c.shape[0] if c is not None else 0)
            if c is None or c.ndim != 2 or c.shape != (n, self.c_dim):
                raise ValueError(f"c must have shape [N, {self.c_dim}] (c_dim={self.c_dim}), got "
                                 f"{None if c is None else list(c.shape)}")
            lo, hi = (self.label_lo, self.label_hi) if self.label_range is not None else (None, None)
            parts.append(normalize_2nd_moment(self.embed(label_features(c.to(dtype), self.label_encoding, lo, hi))))
        elif c is not None:
            raise ValueError(f"this network is unconditional (c_dim=0); give no label c, got {list(c.shape)}")
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(self, z: torch.Tensor, c: torch.Tensor = None, truncation_psi: float = 1.0,
                truncation_cutoff: int = None, update_w_avg: bool = False) -> torch.Tensor:
        """z [N, z_dim] (and label c [N, c_dim]) -> ws [N, num_ws, w_dim], or w [N, w_dim] when num_ws is
        None. update_w_avg=True (training only) tracks the mean w."""
        device = (z if z is not None else c).device
        # The mapping network is cheap and w feeds w_avg and truncation, so it always runs in full
        # precision, also inside a bf16 autocast region.
        with torch.autocast(device.type, enabled=False):
            x = self._input(z, c)
            for layer in self.layers:
                x = layer(x)                                             # [N, w_dim]
        if self.num_ws is None:
            return x
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x[:, None, :].repeat(1, self.num_ws, 1)                     # [N, num_ws, w_dim]
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            if not 0 <= cutoff <= self.num_ws:
                raise ValueError(f"truncation_cutoff must be in [0, {self.num_ws}] or None, got {cutoff}")
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)  # w_avg + psi (w - w_avg)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally x2 upsampling) + per-pixel noise + bias + lrelu (StyleGAN2 fig. 2d)."""

    def __init__(self,
                 in_channels: int,              # input feature maps
                 out_channels: int,             # output feature maps
                 w_dim: int,                    # width of the w that drives the style affine
                 resolution: int,               # output resolution (size of the const noise buffer)
                 up: int = 1,                   # 2 = double the resolution
                 kernel_size: int = 3,          # conv kernel width
                 conv_clamp: float = None):     # clamp |activations| to this; None = off
        super().__init__()
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)  # styles start at 1
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        # Demodulation cancels any constant weight scale; the equalized-LR gain is still applied so
        # that the unfused modulation (x * s, then conv) keeps activations of order one.
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.noise_strength = nn.Parameter(torch.zeros([]))              # learned, starts at 0
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("resample_filter", fir_kernel(), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                fused_modconv: bool = False) -> torch.Tensor:
        styles = self.affine(w)                                          # [N, I]
        # LRELU_GAIN * lrelu(y + noise + b) = lrelu(g y + g noise + g b): the gain joins the demodulation
        # coefficients, the noise their multiply-add, the bias and leaky ReLU run in place.
        g = LRELU_GAIN
        noise = None
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            noise = noise * (self.noise_strength * g).to(x.dtype)              # [N, 1, R, R]
        elif noise_mode == "const":
            noise = self.noise_const * (self.noise_strength * g)              # [R, R]
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, up=self.up, f=self.resample_filter,
                             fused=fused_modconv, gain=g, noise=noise)        # [N, O, R, R]
        x = F.leaky_relu_(x.add_(self.bias.to(x.dtype)[:, None, None] * g), LRELU_SLOPE)
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation, style scaled by 1/sqrt(in_channels), bias, linear."""

    def __init__(self,
                 in_channels: int,              # input feature maps
                 img_channels: int,             # output image channels (1 for MRI)
                 w_dim: int,                    # width of w
                 conv_clamp: float = None):     # clamp |output| to this; None = off
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = False) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain                      # [N, I]
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return bias_act(x, self.bias, "linear", 1.0, self.conv_clamp)   # [N, img_channels, R, R]


class SynthesisBlock(nn.Module):
    """One resolution of the "skip" generator: [const | conv0 (up x2)], conv1, ToRGB; the image is the
    sum of every resolution's ToRGB output, each upsampled with the FIR filter (StyleGAN2 fig. 7b)."""

    def __init__(self,
                 in_channels: int,              # feature maps from the previous block; 0 = first (4x4) block
                 out_channels: int,             # feature maps of this block
                 w_dim: int,                    # width of w
                 resolution: int,               # output resolution of this block
                 img_channels: int,             # output image channels
                 conv_clamp: float = None):     # activation clamp; None = off
        super().__init__()
        self.resolution = resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))  # learned input
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if self.conv0 is None else 2
        self.register_buffer("resample_filter", fir_kernel(), persistent=False)

    def forward(self, x, img, ws: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = False):
        """ws [N, num_conv + 1, w_dim]: one w per conv, the last one for ToRGB."""
        if self.conv0 is None:
            x = self.const[None].repeat(ws.shape[0], 1, 1, 1)           # [N, C, 4, 4]
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, fused_modconv)      # [N, C, R, R]
        x = self.conv1(x, ws[:, self.num_conv - 1], noise_mode, fused_modconv)
        y = self.torgb(x, ws[:, self.num_conv], fused_modconv)        # [N, img_channels, R, R]
        y = y.to(torch.promote_types(y.dtype, torch.float32))            # the image sum stays full precision
        if img is None:
            return x, y
        with torch.autocast(y.device.type, enabled=False):
            img = upsample2d(img, self.resample_filter)                  # [N, C', R, R]
            if img.shape[1] == y.shape[1]:
                return x, img + y
            c = img.shape[1]                                             # a mask head only here (mask_head "top")
            return x, torch.cat([img + y[:, :c], y[:, c:]], dim=1)


def mask_activation(logits: torch.Tensor, hard: bool = True) -> torch.Tensor:
    """Mask channels of G, scaled to [-1, 1] like a real mask (one-hot * 2 - 1), in float32 [N, K, R, R].
    hard ("onehot"): the one-hot map of the most likely class, its gradient the softmax's (straight-through
    estimator, Bengio et al. 2013): D sees masks exactly as discrete as the real ones, so it cannot tell fakes
    by soft values, and G still learns through the class probabilities. hard=False ("softmax"): the class
    probabilities themselves, which D sees through the same blur as the real masks (--mask_blur); a soft edge
    from background to grey matter can mix those two classes alone, so its argmax need not draw CSF there,
    where a level channel snapped to the nearest level does."""
    soft = torch.softmax(logits.float(), dim=1)
    if not hard:
        return soft * 2 - 1
    onehot = F.one_hot(soft.argmax(dim=1), soft.shape[1]).permute(0, 3, 1, 2).to(soft.dtype)
    return (onehot + (soft - soft.detach())) * 2 - 1              # exactly hard: the difference is 0


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels (+ mask channels), R, R], one SynthesisBlock per
    resolution 4..R. With mask_classes > 0 the ToRGB layers also output the mask, summed over resolutions like
    the image: with mask_encoding "onehot" or "softmax" the mask_classes class logits, which go through
    mask_activation (hard, or the probabilities);
    with "level" one continuous channel holding the class level (class k of K at 2 k / (K - 1) - 1), left
    as it is and snapped to the nearest level only when a mask is read off (dataset.mask_labels); with "split"
    or "split_dark" two continuous channels, brain against background and the tissue level (dataset.mask_channels).
    mask_head "top" gives the mask channels to the last block's ToRGB only: the mask is then a per-pixel
    linear read-out of the full-resolution features, which carry the layout (Zhang et al. 2021, DatasetGAN),
    without the upsampled lower-resolution terms (measured on the demo data: no sharper masks, docs/results.md)."""

    def __init__(self,
                 w_dim: int,                    # width of w
                 img_resolution: int,           # output resolution (power of two)
                 img_channels: int,             # output image channels
                 channel_base: int = 16384,     # channels at resolution r = min(channel_base // r, channel_max)
                 channel_max: int = 512,        # upper bound on channels
                 conv_clamp: float = None,      # activation clamp (256 with reduced precision); None = off
                 mask_classes: int = 0,         # tissue classes generated with the image (0 = image only)
                 mask_encoding: str = "onehot",  # mask channels: "onehot" (one per class), "level" (one), "split(_dark)" (two)
                 mask_head: str = "skip"):      # which ToRGBs output the mask: "skip" (all, summed) or "top" (last)
        super().__init__()
        log2 = check_network_size(img_resolution, img_channels, channel_base, channel_max)
        if mask_head not in MASK_HEADS:
            raise ValueError(f"mask_head must be one of {MASK_HEADS}, got {mask_head!r}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.mask_channels = mask_channel_count(mask_classes, mask_encoding)
        self.mask_classes, self.mask_encoding, self.mask_head = mask_classes, mask_encoding, mask_head
        out_rgb = img_channels + self.mask_channels
        self.blocks = nn.ModuleDict()                                     # "b4", "b8", ..., f"b{R}"
        in_channels = 0
        for res in [2 ** i for i in range(2, log2 + 1)]:
            out_channels = channels_at(res, channel_base, channel_max)
            rgb = img_channels if mask_head == "top" and res < img_resolution else out_rgb
            self.blocks[f"b{res}"] = SynthesisBlock(in_channels, out_channels, w_dim, res, rgb, conv_clamp)
            in_channels = out_channels
        # Consecutive blocks share a w: block b's ToRGB uses the same w as block b+1's conv0.
        self.num_ws = sum(b.num_conv for b in self.blocks.values()) + 1   # 2 * log2(R) - 2

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = False) -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}] (num_ws, w_dim), "
                             f"got {list(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {', '.join(NOISE_MODES)}; got {noise_mode!r}")
        x = img = None
        w_idx = 0
        for block in self.blocks.values():
            x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + 1], noise_mode, fused_modconv)
            w_idx += block.num_conv
        if self.mask_classes and self.mask_encoding in config.CLASS_ENCODINGS:
            c = self.img_channels
            soft = self.mask_encoding == "softmax"
            img = torch.cat([img[:, :c].float(), mask_activation(img[:, c:], hard=not soft)], dim=1)   # [N, C + K, R, R]
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: MappingNetwork (z -> ws) followed by SynthesisNetwork (ws -> image)."""

    def __init__(self,
                 z_dim: int = 512,              # latent z width
                 w_dim: int = 512,              # intermediate latent w width
                 img_resolution: int = 256,     # output resolution (power of two >= 8)
                 img_channels: int = 1,         # output channels (1 for MRI, 3 for RGB)
                 mapping_layers: int = 8,       # FC layers in the mapping network
                 channel_base: int = 16384,     # channel scale (16384 = fmaps 0.5, 32768 = fmaps 1)
                 channel_max: int = 512,        # upper bound on channels
                 conv_clamp: float = None,      # activation clamp (256 with reduced precision); None = off
                 mapping_lr_mul: float = 0.01,  # learning-rate multiplier of the mapping network
                 mask_classes: int = 0,         # tissue classes generated as extra channels (0 = image only)
                 mask_encoding: str = "onehot",  # mask channels: "onehot", "level", "split(_dark)" (SynthesisNetwork)
                 mask_head: str = "skip",       # which ToRGBs output the mask: "skip" (all) or "top" (SynthesisNetwork)
                 c_dim: int = 0,                # label width (0 = unconditional; StyleGAN2-ADA conditioning)
                 label_encoding: str = "none",  # "none" (official) or "fourier" (continuous labels; label_features)
                 label_range=None):             # "fourier": (lo, hi) per label mapped to [0, 1]; None = as given
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self.img_resolution, self.img_channels, self.mask_classes = img_resolution, img_channels, mask_classes
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max, conv_clamp,
                                          mask_classes, mask_encoding, mask_head)
        self.mask_encoding = mask_encoding
        self.num_ws = self.synthesis.num_ws
        self.c_dim = c_dim
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, lr_mul=mapping_lr_mul, c_dim=c_dim,
                                      label_encoding=label_encoding, label_range=label_range)

    def forward(self, z: torch.Tensor, c: torch.Tensor = None, truncation_psi: float = 1.0,
                truncation_cutoff: int = None, noise_mode: str = "random", update_w_avg: bool = False,
                fused_modconv: bool = False) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_w_avg=update_w_avg)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)


# ----------------------------------------------------------------------------------------------
# Discriminator

class DiscriminatorBlock(nn.Module):
    """Residual block r -> r/2: [FromRGB], conv0 3x3, conv1 3x3 down x2, plus a 1x1 down x2 skip;
    both branches are scaled by sqrt(0.5) so the sum keeps unit variance (StyleGAN2 fig. 7c)."""

    def __init__(self,
                 in_channels: int,              # feature maps in; 0 = first block (reads the image via FromRGB)
                 tmp_channels: int,             # feature maps at this resolution
                 out_channels: int,             # feature maps at half this resolution
                 img_channels: int,             # input image channels
                 conv_clamp: float = None):     # activation clamp; None = off
        super().__init__()
        self.fromrgb = (Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
                        if in_channels == 0 else None)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2,
                                 gain=math.sqrt(0.5), conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, gain=math.sqrt(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(x)                                          # [N, tmp, R, R]
        y = self.skip(x)                                                 # [N, out, R/2, R/2]
        x = self.conv1(self.conv0(x))                                    # [N, out, R/2, R/2]
        return y + x


class MinibatchStd(nn.Module):
    """Appends the minibatch standard deviation feature map(s); see minibatch_stddev()."""

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        if group_size < 1:
            raise ValueError(f"mbstd_group_size must be >= 1, got {group_size}")
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return minibatch_stddev(x, self.group_size, self.num_channels)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch stddev, conv 3x3, FC (C*16 -> C) + lrelu, FC (C -> out_dim: 1, or cmap_dim
    projected onto the label's embedding by a conditional D)."""

    def __init__(self,
                 in_channels: int,              # feature maps at 4x4
                 mbstd_group_size: int = 4,     # images per minibatch-stddev group (min'ed with N)
                 mbstd_num_channels: int = 1,   # stddev feature maps appended
                 conv_clamp: float = None,      # activation clamp; None = off
                 out_dim: int = 1):             # outputs of the last FC
        super().__init__()
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * 4 * 4, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.mbstd(x))                                     # [N, C, 4, 4]
        x = self.fc(x.flatten(1).to(self.fc.weight.dtype))               # [N, C*16] -> [N, C]
        return self.out(x)                                               # [N, out_dim]


class Discriminator(nn.Module):
    """StyleGAN2 "resnet" discriminator: image [N, img_channels (+ mask channels), R, R] -> logits [N, 1]. With
    mask_classes > 0 it judges image and mask together (FromRGB reads both; the mask in mask_encoding's form). With c_dim > 0 it is the
    projection discriminator of StyleGAN2-ADA: a label mapping network turns c into cmap [N, cmap_dim]
    (cmap_dim = channels at 4x4) and the logit is (epilogue(x) * cmap).sum(1) / sqrt(cmap_dim)."""

    def __init__(self,
                 img_resolution: int = 256,     # input resolution (power of two >= 8)
                 img_channels: int = 1,         # input channels
                 channel_base: int = 16384,     # channels at resolution r = min(channel_base // r, channel_max)
                 channel_max: int = 512,        # upper bound on channels
                 mbstd_group_size: int = 4,     # minibatch-stddev group size (min'ed with the batch)
                 mbstd_num_channels: int = 1,   # minibatch-stddev feature maps
                 conv_clamp: float = None,      # activation clamp (256 with reduced precision); None = off
                 mask_classes: int = 0,         # mask classes read after the image channels (0 = image only)
                 mask_encoding: str = "onehot",  # the mask as one channel per class or one level channel
                 c_dim: int = 0,                # label width (0 = unconditional)
                 mapping_layers: int = 8,       # FC layers of the label mapping (as G's mapping)
                 label_encoding: str = "none",  # "none" (official) or "fourier" (as G's)
                 label_range=None):             # as G's
        super().__init__()
        log2 = check_network_size(img_resolution, img_channels, channel_base, channel_max)
        self.img_resolution, self.mask_classes, self.mask_encoding = img_resolution, mask_classes, mask_encoding
        self.img_channels = img_channels + mask_channel_count(mask_classes, mask_encoding)   # channels D reads
        self.blocks = nn.ModuleDict()                                     # f"b{R}", ..., "b16", "b8"
        for res in [2 ** i for i in range(log2, 2, -1)]:
            self.blocks[f"b{res}"] = DiscriminatorBlock(
                in_channels=0 if res == img_resolution else channels_at(res, channel_base, channel_max),
                tmp_channels=channels_at(res, channel_base, channel_max),
                out_channels=channels_at(res // 2, channel_base, channel_max),
                img_channels=self.img_channels, conv_clamp=conv_clamp)
        self.c_dim, self.cmap_dim = c_dim, channels_at(4, channel_base, channel_max) if c_dim else 0
        self.mapping = (MappingNetwork(0, self.cmap_dim, None, mapping_layers, w_avg_beta=None, c_dim=c_dim,
                                       label_encoding=label_encoding, label_range=label_range) if c_dim else None)
        self.epilogue = DiscriminatorEpilogue(channels_at(4, channel_base, channel_max), mbstd_group_size,
                                              mbstd_num_channels, conv_clamp, out_dim=self.cmap_dim or 1)

    def forward(self, img: torch.Tensor, c: torch.Tensor = None) -> torch.Tensor:
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or img.shape[1:] != expected:
            raise ValueError(f"D expects images of shape [N, {', '.join(map(str, expected))}], got {list(img.shape)}")
        if self.c_dim == 0 and c is not None:
            raise ValueError(f"this D is unconditional (c_dim=0); give no label c, got {list(c.shape)}")
        x = img
        for block in self.blocks.values():
            x = block(x)                                                 # [N, C, r/2, r/2]
        x = self.epilogue(x)                                             # [N, cmap_dim or 1]
        if self.c_dim:
            if c is None or c.shape[0] != img.shape[0]:
                raise ValueError(f"c must have shape [{img.shape[0]}, {self.c_dim}] (c_dim={self.c_dim}), got "
                                 f"{None if c is None else list(c.shape)}")
            cmap = self.mapping(None, c)                                 # [N, cmap_dim]
            x = (x * cmap.to(x.dtype)).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)   # [N, 1]
        return x


# ----------------------------------------------------------------------------------------------
# Summary (python bench.py summary)

def count_params(module: nn.Module) -> int:
    """Trainable parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def summary_rows(G: "Generator", D: "Discriminator"):
    """(network, layer name, output shape, parameters) for each block of G and D, in forward order."""
    r, c = G.img_resolution, G.img_channels
    yield "G", "mapping", f"[N, {G.num_ws}, {G.w_dim}]", count_params(G.mapping)
    for name, block in G.synthesis.blocks.items():
        yield "G", f"synthesis.{name}", f"[N, {block.conv1.weight.shape[0]}, {block.resolution}, {block.resolution}]", \
            count_params(block)
    yield "G", "image", f"[N, {c}, {r}, {r}]", 0
    for name, block in D.blocks.items():
        res = int(name[1:]) // 2
        yield "D", name, f"[N, {block.conv1.weight.shape[0]}, {res}, {res}]", count_params(block)
    yield "D", "epilogue", "[N, 1]", count_params(D.epilogue)
