"""StyleGAN2 networks: the generator (mapping + "skip" synthesis) and the "resnet" discriminator.

This file owns the architecture and the mathematics of its layers, in pure PyTorch (no compiled
extensions): equalized learning rate, modulated/demodulated convolution, [1, 3, 3, 1] FIR
up/downsampling, per-layer noise, truncation and minibatch standard deviation. It does not own
losses, regularizers, optimizers or data (train.py, augment.py, dataset.py).

References: Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2)
and Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data" (ADA), whose
official release fixes the layer sizes reproduced here (see ../shared/SPEC.md for the facts).

Run `python modules.py --resolution 256` to print the layer table and parameter counts.
"""

import contextlib
import contextvars
import math
import sys
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

LRELU_SLOPE = 0.2              # leaky ReLU negative slope (StyleGAN, sec. 2)
LRELU_GAIN = math.sqrt(2)      # He gain that keeps the activation variance of a leaky ReLU layer
DEMOD_EPS = 1e-8               # demodulation epsilon, StyleGAN2 eq. 3
NOISE_MODES = ("random", "const", "none")
FIR_TAPS = (1, 3, 3, 1)        # binomial low-pass filter for all resampling (StyleGAN2 appendix B)


def check_resolution(resolution: int, what: str = "img_resolution") -> int:
    """Return log2(resolution), or raise a ValueError naming the expected values."""
    if not isinstance(resolution, int) or resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"{what} must be a power of two >= 8 (e.g. 64, 128, 256), got {resolution!r}")
    return int(math.log2(resolution))


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: min(channel_base // r, channel_max)."""
    return min(channel_base // resolution, channel_max)


def check_activation(activation: str) -> str:
    if activation not in ("linear", "lrelu"):
        raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
    return activation


def check_mask_classes(mask_classes: int) -> int:
    if not isinstance(mask_classes, int) or mask_classes < 0 or mask_classes == 1:
        raise ValueError(f"mask_classes must be 0 (image only) or >= 2 classes, got {mask_classes!r}")
    return mask_classes


def check_network_size(img_resolution: int, img_channels: int, channel_base: int, channel_max: int) -> int:
    """Validate the size arguments shared by G and D; return log2(img_resolution)."""
    log2 = check_resolution(img_resolution)
    if not isinstance(img_channels, int) or img_channels < 1:
        raise ValueError(f"img_channels must be a positive integer (1 for MRI, 3 for RGB), got {img_channels!r}")
    if channel_max < 1 or channels_at(img_resolution, channel_base, channel_max) < 1:
        raise ValueError(f"channel_base={channel_base}, channel_max={channel_max} give no channels at "
                         f"{img_resolution} px; use channel_base >= {img_resolution} and channel_max >= 1")
    return log2


# ----------------------------------------------------------------------------------------------
# Pure functions

# ----------------------------------------------------------------------------------------------
# Convolutions whose every derivative order is again a plain convolution
#
# R1 and path-length regularization differentiate through the networks twice. PyTorch's generic
# double backward of a convolution calls the convolution kernels with weight- and gradient-shaped
# operands in unusual roles, which have no fast kernels (on an H100 the two regularizer passes took 50x
# a plain D or G step, BENCHMARKS.md). Here the gradient of a convolution is written as the adjoint
# convolution plus a weight-gradient op, and the gradient of that op as two more convolutions, so every
# order of differentiation runs as ordinary convolutions. Same function (tested in float64 against
# torch.autograd to third order); on the CPU it cut the demo preset's R1 pass from 336 to 206 ms.

class ConvSpec(NamedTuple):
    transpose: bool                 # conv_transpose2d instead of conv2d
    stride: tuple
    padding: tuple
    output_padding: tuple           # only for transpose
    groups: int

    def adjoint(self, x_shape, w_shape, y_shape) -> "ConvSpec":
        """The convolution that maps dL/dy back to dL/dx (same weight tensor), sized to x exactly."""
        if self.transpose:
            return self._replace(transpose=False, output_padding=(0, 0))
        k = w_shape[2:]
        out_pad = tuple(x_shape[2 + d] - ((y_shape[2 + d] - 1) * self.stride[d] - 2 * self.padding[d] + k[d])
                        for d in range(2))
        return self._replace(transpose=True, output_padding=out_pad)


def _conv_plain(x: torch.Tensor, w: torch.Tensor, spec: ConvSpec, b: torch.Tensor = None) -> torch.Tensor:
    if spec.transpose:
        return F.conv_transpose2d(x, w, b, spec.stride, spec.padding, spec.output_padding, spec.groups)
    return F.conv2d(x, w, b, spec.stride, spec.padding, 1, spec.groups)


def _grad_used(ctx, i: int) -> bool:
    """Whether this backward pass uses the gradient of input i. The autograd engine knows what
    autograd.grad(..., inputs) will reach: R1 and path length ask only for the image's or the ws'
    gradient in their first pass, so every conv skips its weight gradient there (StyleGAN2-ADA does the
    same by hand, conv2d_gradfix.no_weight_gradients). A leaf inside autograd.grad cannot be asked: computed."""
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    try:
        return node is not None and torch._C._will_engine_execute_node(node)
    except RuntimeError:
        return True


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, spec):
        ctx.save_for_backward(x, w)
        ctx.spec, ctx.fused = spec, _LAYER_IMPL.get() == "fused"   # read here: backward may run on another thread
        return _conv_plain(x, w, spec, b)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        spec = ctx.spec
        need = [_grad_used(ctx, i) for i in range(3)] if ctx.fused else list(ctx.needs_input_grad[:3])
        if ctx.fused and not torch.is_grad_enabled() and spec.stride == (1, 1) and not spec.transpose:
            # First-order backward (no create_graph) of a stride-1 conv: PyTorch's kernel gives dL/dx, dL/dw and
            # dL/db in one call (as fast as two calls or faster on the CPU; slower at stride 2, so not there).
            return (*torch.ops.aten.convolution_backward(
                gy, x, w, [w.shape[0]], list(spec.stride), list(spec.padding), [1, 1], False, [0, 0],
                spec.groups, need), None)
        gx = gw = gb = None
        if need[0]:
            gx = _Conv.apply(gy, w, None, spec.adjoint(x.shape, w.shape, gy.shape))
        if need[1]:
            gw = _ConvWeightGrad.apply(gy, x, w, spec)
        if need[2]:
            gb = gy.sum(dim=[0, 2, 3])
        return gx, gw, gb, None


class _ConvWeightGrad(torch.autograd.Function):
    """dL/dw of a convolution from dL/dy and x (w only gives the shape). Bilinear in (gy, x)."""

    @staticmethod
    def forward(ctx, gy, x, w, spec):
        ctx.save_for_backward(gy, x)
        ctx.spec, ctx.w_shape = spec, w.shape
        return torch.ops.aten.convolution_backward(
            gy, x, w, None, list(spec.stride), list(spec.padding), [1, 1], spec.transpose,
            list(spec.output_padding), spec.groups, [False, True, False])[1]

    @staticmethod
    def backward(ctx, ggw):
        gy, x = ctx.saved_tensors
        spec = ctx.spec
        ggy = gx = None
        if ctx.needs_input_grad[0]:            # d<ggw, dW(gy, x)>/dgy = conv(x, ggw)
            ggy = _Conv.apply(x, ggw, None, spec)
        if ctx.needs_input_grad[1]:            # d<ggw, dW(gy, x)>/dx = adjoint conv of gy with ggw
            gx = _Conv.apply(gy, ggw, None, spec.adjoint(x.shape, ctx.w_shape, gy.shape))
        return ggy, gx, None, None


_CONV_IMPL = contextvars.ContextVar("conv_impl", default="regrad")


@contextlib.contextmanager
def conv_impl(name: str):
    """Choose the convolution implementation inside a with-block: "regrad" (the default, above) or
    "torch" (PyTorch's own gradients, the reference). For tests and bench.py."""
    if name not in ("regrad", "torch"):
        raise ValueError(f"conv_impl must be regrad or torch, got {name!r}")
    token = _CONV_IMPL.set(name)
    try:
        yield
    finally:
        _CONV_IMPL.reset(token)


def _pair(v) -> tuple:
    return (v, v) if isinstance(v, int) else tuple(v)


_LAYER_IMPL = contextvars.ContextVar("layer_impl", default="fused")


@contextlib.contextmanager
def layer_impl(name: str):
    """Choose how the layers run their elementwise work and convolution gradients inside a with-block:
    "fused" (the default: gains folded into weights, bias inside the convolution, noise in the
    demodulation's multiply-add, in-place leaky ReLU, one convolution_backward call in first-order passes,
    no unused weight gradients) or "reference" (one op per step of the formula, as before). Same functions.
    For tests and bench.py."""
    if name not in ("fused", "reference"):
        raise ValueError(f"layer_impl must be fused or reference, got {name!r}")
    token = _LAYER_IMPL.set(name)
    try:
        yield
    finally:
        _LAYER_IMPL.reset(token)


def layers_fused() -> bool:
    """True outside layer_impl("reference"); always True while torch.compile traces."""
    return torch.compiler.is_compiling() or _LAYER_IMPL.get() == "fused"


def _conv(x: torch.Tensor, w: torch.Tensor, spec: ConvSpec, b: torch.Tensor = None) -> torch.Tensor:
    # Compiled graphs (train.py --compile) serve first-order steps only, where PyTorch's own gradients are
    # what regrad computes; the check comes first so the compiler never reads the context variable.
    if torch.compiler.is_compiling() or _CONV_IMPL.get() == "torch" or not torch.is_grad_enabled() \
            or not (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
        return _conv_plain(x, w, spec, b)
    if torch.is_autocast_enabled(x.device.type):       # autocast does not see inside a Function: cast here
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w, b = x.to(dtype), w.to(dtype), (b.to(dtype) if b is not None else None)
    return _Conv.apply(x, w, b, spec)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, groups: int = 1, bias=None) -> torch.Tensor:
    """F.conv2d without dilation, with fast higher-order gradients (see above)."""
    if w.shape[2:] == (1, 1) and stride == 1 and padding == 0 and groups == 1 and layers_fused() \
            and x.is_contiguous(memory_format=torch.channels_last):
        # A 1x1 convolution of NHWC activations is one matrix product over channels, whose output is NHWC
        # again (the convolution kernels took a slow path here and returned NCHW, copied back by the next
        # conv) and whose every derivative is a matrix product.
        return F.linear(x.permute(0, 2, 3, 1), w.flatten(1), bias).permute(0, 3, 1, 2)   # [N, O, H, W]
    return _conv(x, w, ConvSpec(False, _pair(stride), _pair(padding), (0, 0), groups), bias)


def conv_transpose2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, output_padding=0,
                     groups: int = 1) -> torch.Tensor:
    """F.conv_transpose2d without bias or dilation, with fast higher-order gradients (see above)."""
    return _conv(x, w, ConvSpec(True, _pair(stride), _pair(padding), _pair(output_padding), groups))


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale x to unit second moment along dim (ProGAN sec. 4.2 pixel norm, eps 1e-8; StyleGAN's z input)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def fir_kernel(taps=FIR_TAPS) -> torch.Tensor:
    """Separable 2D FIR kernel from 1D taps, normalized to unit sum. [K, K]"""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = f[:, None] * f[None, :]
    return f / f.sum()


# ----------------------------------------------------------------------------------------------
# FIR resampling as sums of shifted slices
#
# Every resampling filter here is separable, so a 2D filter runs as a pass along H, then one along W,
# and each pass as K shifted (strided) slices of the input, times the taps, added into the output: no
# grouped (depthwise) convolution, whose higher derivatives were the slow part of R1 and path length on an
# H100 (BENCHMARKS.md), and a form that torch.compile fuses into one kernel. A pass is linear in x, so its
# gradient is the adjoint pass (taps flipped, up and down swapped) and every derivative order is again a
# slice sum (_Fir2d). fir_impl("conv") selects the depthwise-convolution form of the same functions, kept as
# the reference. On the 2-core CPU both cost the same in the networks; the augment pipe's 12-tap filters
# are 1.6-2.7x faster as slices.

class FirSpec(NamedTuple):
    """One 1D pass (StyleGAN2-ADA's upfirdn along one axis): insert up-1 zeros after each sample, pad
    pad0 / pad1 zeros (negative crops), correlate with the K taps, keep every down-th sample."""
    up: int
    down: int
    pad0: int
    pad1: int

    def out_len(self, n: int, k: int) -> int:
        return (n * self.up + self.pad0 + self.pad1 - k) // self.down + 1

    def adjoint(self, n: int, k: int) -> "FirSpec":
        """The pass (with the taps flipped) that maps dL/dy back to dL/dx, sized to the input length n."""
        pad0 = k - 1 - self.pad0
        return FirSpec(self.down, self.up, pad0, n * self.up - self.out_len(n, k) * self.down - pad0 + k - 1)

    @staticmethod
    def transposed(k: int, stride: int, padding: int, output_padding: int = 0) -> "FirSpec":
        """The pass equal to conv_transpose1d with a K-tap kernel (taps flipped, since a transposed
        convolution convolves where a pass correlates)."""
        return FirSpec(stride, 1, k - 1 - padding, k - stride - padding + output_padding)


def _fir1d(x: torch.Tensor, taps, dim: int, spec: FirSpec) -> torch.Tensor:
    """One pass along dim: y[j] = sum_t taps[t] * xz[j * down + t - pad0], xz = x with the zeros inserted.
    Each tap adds one strided slice of x into one strided slice of y (polyphase: the inserted zeros are
    never multiplied). taps: K 0-dim tensors; up > 1 needs down == 1, which all callers use."""
    n, k, u, d, p0 = x.shape[dim], len(taps), spec.up, spec.down, spec.pad0
    if u > 1 and d > 1:
        raise ValueError(f"a FIR pass resamples by up or down, not both (up={u}, down={d})")
    out = spec.out_len(n, k)
    lead = (slice(None),) * (dim % x.ndim)
    terms = []                                   # (output phase, covers the whole phase, y slice, x slice, tap)
    for t, c in enumerate(taps):
        if u == 1:        # y[j] += c * x[j*d + t - p0] for the j whose source is inside x
            r, j0, j1 = 0, max(0, -((t - p0) // d)), min(out - 1, (n - 1 + p0 - t) // d)
            i0 = j0 * d + t - p0
            ys, xs, full = slice(j0, j1 + 1), slice(i0, i0 + d * (j1 - j0) + 1, d), j0 == 0 and j1 == out - 1
        else:             # y[r + u*m] += c * x[m + s]: the outputs of phase r see tap t
            r = (p0 - t) % u
            s = (r + t - p0) // u
            j0, j1 = max(0, -s), min((out - 1 - r) // u, n - 1 - s)
            ys, xs = slice(r + u * j0, r + u * j1 + 1, u), slice(j0 + s, j1 + s + 1)
            full = j0 == 0 and j1 == (out - 1 - r) // u
        if j1 >= j0:
            terms.append((r, full, lead + (ys,), lead + (xs,), c))
    shape = list(x.shape)
    shape[dim] = out
    nhwc = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last if nhwc else
                    torch.contiguous_format)
    first = {}                                   # phase -> the term that writes it first (no zero fill)
    for term in terms:
        if term[1] and term[0] not in first:
            first[term[0]] = term
    for r in range(min(u, out)):
        if r not in first:
            y[lead + (slice(r, None, u),)].zero_()
    for r, _, ys, xs, c in first.values():
        torch.mul(x[xs], c, out=y[ys])
    for term in terms:
        r, _, ys, xs, c = term
        if first.get(r) is not term:
            y[ys].addcmul_(x[xs], c)
    return y


def _fir1d_functional(x: torch.Tensor, taps: torch.Tensor, dim: int, spec: FirSpec) -> torch.Tensor:
    """_fir1d written out of place (zero insertion, pad, sum of slices), for torch.compile, which derives
    its gradients and fuses the sum into one kernel."""
    dim = dim % x.ndim
    if spec.up > 1:
        zeros = [torch.zeros_like(x)] * (spec.up - 1)
        x = torch.stack([x, *zeros], dim=dim + 1).flatten(dim, dim + 1)  # [.., n * up, ..]
    pad = [0, 0] * (x.ndim - 1 - dim) + [spec.pad0, spec.pad1]
    x = F.pad(x, pad)
    k = taps.shape[0]
    out = (x.shape[dim] - k) // spec.down + 1
    taken = (slice(None),) * dim
    return sum(x[taken + (slice(t, t + spec.down * (out - 1) + 1, spec.down),)] * taps[t] for t in range(k))


class _Fir2d(torch.autograd.Function):
    """Separable FIR pass along H (taps fy) then W (taps fx); its gradient is the adjoint pass, so it is
    differentiable to every order with slice sums only. The taps are constants (no gradient)."""

    @staticmethod
    def forward(ctx, x, fy, fx, spec_h, spec_w):
        ctx.save_for_backward(fy, fx)
        ctx.specs, ctx.size = (spec_h, spec_w), x.shape[2:]
        return _fir1d(_fir1d(x, fy.unbind(), 2, spec_h), fx.unbind(), 3, spec_w)

    @staticmethod
    def backward(ctx, gy):
        fy, fx = ctx.saved_tensors
        (spec_h, spec_w), (h, w) = ctx.specs, ctx.size
        gx = _Fir2d.apply(gy, fy.flip(0), fx.flip(0), spec_h.adjoint(h, fy.shape[0]), spec_w.adjoint(w, fx.shape[0]))
        return gx, None, None, None, None


_FIR_IMPL = contextvars.ContextVar("fir_impl", default="slices")


@contextlib.contextmanager
def fir_impl(name: str):
    """Choose the FIR resampling implementation inside a with-block: "slices" (the default, above) or
    "conv" (depthwise convolutions, the reference). Covers modules.py and augment.py. For tests and bench.py."""
    if name not in ("slices", "conv"):
        raise ValueError(f"fir_impl must be slices or conv, got {name!r}")
    token = _FIR_IMPL.set(name)
    try:
        yield
    finally:
        _FIR_IMPL.reset(token)


def fir_uses_conv() -> bool:
    """True inside fir_impl("conv"); always False while torch.compile traces (the slice form fuses)."""
    return not torch.compiler.is_compiling() and _FIR_IMPL.get() == "conv"


def fir2d(x: torch.Tensor, fy: torch.Tensor, fx: torch.Tensor, spec_h: FirSpec,
          spec_w: FirSpec = None) -> torch.Tensor:
    """Separable FIR resampling of every channel of x [N, C, H, W]: the pass spec_h with taps fy [K]
    along H, then spec_w (default: the same) with taps fx [L] along W. Runs in x's dtype."""
    spec_w = spec_h if spec_w is None else spec_w
    fy, fx = fy.to(device=x.device, dtype=x.dtype), fx.to(device=x.device, dtype=x.dtype)
    if torch.compiler.is_compiling():
        return _fir1d_functional(_fir1d_functional(x, fy, 2, spec_h), fx, 3, spec_w)
    return _Fir2d.apply(x, fy, fx, spec_h, spec_w)


def _separable(f: torch.Tensor, gain: float = 1.0):
    """(taps along H [K], taps along W [K]) of a separable 2D kernel f [K, K] (fir_kernel's), gain on H."""
    return f.sum(dim=1) * gain, f.sum(dim=0) / f.sum()


def _depthwise(f: torch.Tensor, channels: int, x: torch.Tensor) -> torch.Tensor:
    return f.to(device=x.device, dtype=x.dtype).expand(channels, 1, *f.shape)  # [C, 1, K, K]


def blur2d(x: torch.Tensor, f: torch.Tensor, pad: int, gain: float = 1.0, stride: int = 1) -> torch.Tensor:
    """Filter every channel of x with the 2D kernel f after zero-padding `pad` on each side."""
    if fir_uses_conv():
        c = x.shape[1]
        return conv2d(x, _depthwise(f * gain, c, x), stride=stride, padding=pad, groups=c)
    return fir2d(x, *_separable(f, gain), FirSpec(1, stride, pad, pad))


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """x2 upsampling: zero insertion then FIR low-pass with gain 4, centred. [N,C,H,W] -> [N,C,2H,2W]"""
    if fir_uses_conv():
        c = x.shape[1]
        # A stride-2 transposed conv with the filter is zero insertion + filtering; padding=1 crops the
        # 4-tap filter's overhang so that pixel centres stay aligned (output = 2H exactly).
        return conv_transpose2d(x, _depthwise(f * 4, c, x), stride=2, padding=1, groups=c)
    fy, fx = _separable(f, gain=4)
    return fir2d(x, fy.flip(0), fx.flip(0), FirSpec.transposed(f.shape[-1], stride=2, padding=1))


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """x2 downsampling: FIR low-pass then decimation, centred. [N,C,H,W] -> [N,C,H/2,W/2]"""
    return blur2d(x, f, pad=1, stride=2)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor = None, up: int = 1, down: int = 1,
                    groups: int = 1, bias: torch.Tensor = None) -> torch.Tensor:
    """Size-preserving conv with weight w [O, I/groups, k, k], optionally x2 up- or downsampled; bias [O]
    (not with up=2) is added by the convolution itself.

    up=2:   stride-2 transposed conv, then FIR blur (gain 4) to remove the checkerboard.
    down=2: FIR blur, then stride-2 conv (the blur runs at the input resolution, before decimation).
    """
    k = w.shape[-1]
    f = fir_kernel() if f is None else f
    if up == 1 and down == 1:
        return conv2d(x, w, padding=k // 2, groups=groups, bias=bias)
    if up == 2 and bias is not None:
        raise ValueError("conv2d_resample: a bias is added after the upsampling filter; add it there")
    if up == 2:
        o, i = w.shape[0] // groups, w.shape[1]
        # conv_transpose2d wants [in, out/groups, k, k] per group: swap the O and I axes in each group.
        w = w.reshape(groups, o, i, k, k).transpose(1, 2).reshape(groups * i, o, k, k)
        x = conv_transpose2d(x, w, stride=2, groups=groups)  # [N, O, 2H+k-2, 2W+k-2]
        return blur2d(x, f, pad=(f.shape[-1] + 1 - k) // 2, gain=4)  # [N, O, 2H, 2W]
    if down == 2:
        if k == 1 and not fir_uses_conv():
            # A 1x1 conv at stride 2 reads only the even pixels: blur those alone (the same values).
            return conv2d(blur2d(x, f, pad=(f.shape[-1] - 2) // 2, stride=2), w, groups=groups,
                          bias=bias)  # [N, O, H/2, W/2]
        x = blur2d(x, f, pad=k // 2 + (f.shape[-1] - 2) // 2)  # [N, I, H+k-2, W+k-2]
        return conv2d(x, w, stride=2, groups=groups, bias=bias)
    raise ValueError(f"conv2d_resample supports up=1|2 and down=1|2, got up={up}, down={down}")


def bias_act(x: torch.Tensor, b, activation: str = "linear", gain: float = 1.0, clamp=None) -> torch.Tensor:
    """x + b over channels, then optional leaky ReLU, times gain, then optional clamp to [-clamp, clamp]."""
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: int = 1, f: torch.Tensor = None, fused: bool = False, gain: float = 1.0,
                     noise: torch.Tensor = None) -> torch.Tensor:
    """StyleGAN2 modulated convolution (sec. 2.2, eqs. 1-3), times gain, plus noise (broadcast to the output).

    x [N, I, H, W], weight [O, I, k, k], styles [N, I]. Each sample gets its own weight
    w' = weight * s (eq. 1), demodulated to unit L2 norm per output channel (eq. 3).
    fused=True runs one grouped conv over the batch; fused=False scales the activations instead
    (x * s, shared conv, * demod coefficients), which is the same function. The networks default to
    fused=False: it was faster on both an H100 and the CPU (BENCHMARKS.md). The gain and the noise ride
    on the demodulation's multiply (one multiply-add over the output, as StyleGAN2-ADA's fma).
    """
    n, i = x.shape[:2]
    o, _, k, _ = weight.shape
    if fused:
        w = weight[None] * styles[:, None, :, None, None]                 # [N, O, I, k, k]
        if demodulate:
            w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + DEMOD_EPS).rsqrt()
        x = x.reshape(1, n * i, *x.shape[2:])                              # [1, N*I, H, W]
        x = conv2d_resample(x, (w * gain).reshape(n * o, i, k, k), f, up=up, groups=n)
        x = x.reshape(n, o, *x.shape[2:])                                  # [N, O, H', W']
        return x if noise is None else x + noise.to(x.dtype)
    x = x * styles[:, :, None, None].to(x.dtype)
    x = conv2d_resample(x, weight.to(x.dtype), f, up=up)
    if demodulate:
        # sum_{i,k,k} (weight * s_i)^2 = s^2 @ sum_{k,k} weight^2, without materializing [N, O, I, k, k].
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).T + DEMOD_EPS).rsqrt()  # [N, O]
        if not layers_fused():
            x = x * dcoefs[:, :, None, None].to(x.dtype)
            x = x * gain if gain != 1 else x
            return x if noise is None else x + noise.to(x.dtype)
        dcoefs = (dcoefs * gain)[:, :, None, None].to(x.dtype)           # [N, O, 1, 1]
        return x * dcoefs if noise is None else torch.addcmul(noise.to(x.dtype), x, dcoefs)
    x = x * gain if gain != 1 else x
    return x if noise is None else x + noise.to(x.dtype)


def minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int = 1) -> torch.Tensor:
    """Append the minibatch standard deviation as extra feature maps (ProGAN sec. 3).

    Groups are strided: with n = N / G, samples j, j+n, j+2n, ... form one group.
    x [N, C, H, W] -> [N, C + num_channels, H, W]
    """
    n, c, h, w = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch-stddev group size {g} does not divide the batch of {n} images; "
                         f"use a batch that is a multiple of {g} or set mbstd_group_size to a divisor of {n}")
    if c % num_channels:
        raise ValueError(f"mbstd num_channels={num_channels} must divide the {c} feature channels")
    y = x.reshape(g, -1, num_channels, c // num_channels, h, w)           # [G, n, F, c, H, W]
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt()                            # [n, F, c, H, W] std over group (eps: ProGAN)
    y = y.mean(dim=[2, 3, 4])                                             # [n, F]
    y = y.reshape(-1, num_channels, 1, 1).repeat(g, 1, h, w)              # [N, F, H, W]
    return torch.cat([x, y], dim=1)


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
        if self.activation == "lrelu" and layers_fused():
            # LRELU_GAIN * lrelu(x w^T + b) = lrelu(x (g w)^T + g b): the leaky ReLU is positively homogeneous.
            b = self.bias * (self.bias_gain * LRELU_GAIN) if self.bias is not None else None
            return F.leaky_relu(F.linear(x, self.weight * (self.weight_gain * LRELU_GAIN), b), LRELU_SLOPE)
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if self.activation == "linear":
            return F.linear(x, w, b)
        return bias_act(F.linear(x, w), b, "lrelu", LRELU_GAIN)

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
        if layers_fused():
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
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, self.resample_filter, down=self.down)
        b = self.bias * self.bias_gain if self.bias is not None else None
        return bias_act(x, b, self.activation, self.act_gain, self.act_clamp)

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
    (b starts at 0 and learns at lr_mul 0.01) by its own size, so positions 0.3 and 0.9 reach the network
    as almost the same vector; the features have a constant norm and a direction that moves with v."""
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


class MappingNetwork(nn.Module):
    """(z, c) -> w: 2nd-moment normalization, `num_layers` lrelu FC layers (lr_mul 0.01), broadcast to
    num_ws copies, running mean w_avg for truncation (StyleGAN sec. 2 and 4). With a label (c_dim > 0) the
    first layer reads concat(normalize(z), normalize(embed(c))), embed a linear FC c_dim -> w_dim
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
        self.embed = FullyConnectedLayer(label_width(c_dim, label_encoding), w_dim, lr_mul=lr_mul) if c_dim else None
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
        # that the unfused path (x * s, then conv) keeps activations of order one.
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.noise_strength = nn.Parameter(torch.zeros([]))              # learned, starts at 0
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("resample_filter", fir_kernel(), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                fused_modconv: bool = False) -> torch.Tensor:
        styles = self.affine(w)                                          # [N, I]
        if layers_fused():
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
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, up=self.up,
                             f=self.resample_filter, fused=fused_modconv)  # [N, O, R, R]
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            x = x + noise * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
        return bias_act(x, self.bias, "lrelu", LRELU_GAIN, self.conv_clamp)


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
            return x, upsample2d(img, self.resample_filter) + y


def mask_activation(logits: torch.Tensor) -> torch.Tensor:
    """Mask channels of G: the one-hot map of the most likely class, scaled to {-1, 1} like a real mask
    (one-hot * 2 - 1), in float32. Its gradient is the softmax's (straight-through estimator, Bengio et al.
    2013): D sees masks exactly as discrete as the real ones, so it cannot tell fakes by soft values, and G
    still learns through the class probabilities. [N, K, R, R]"""
    soft = torch.softmax(logits.float(), dim=1)
    hard = F.one_hot(soft.argmax(dim=1), soft.shape[1]).permute(0, 3, 1, 2).to(soft.dtype)
    return (hard + (soft - soft.detach())) * 2 - 1                # exactly hard: the difference is 0


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels (+ mask_classes), R, R], one SynthesisBlock per
    resolution 4..R. With mask_classes > 0 the ToRGB layers also output the mask's class logits, summed
    over resolutions like the image, and the last mask_classes channels go through mask_activation."""

    def __init__(self,
                 w_dim: int,                    # width of w
                 img_resolution: int,           # output resolution (power of two)
                 img_channels: int,             # output image channels
                 channel_base: int = 16384,     # channels at resolution r = min(channel_base // r, channel_max)
                 channel_max: int = 512,        # upper bound on channels
                 conv_clamp: float = None,      # activation clamp (256 with reduced precision); None = off
                 mask_classes: int = 0):        # tissue classes generated with the image (0 = image only)
        super().__init__()
        log2 = check_network_size(img_resolution, img_channels, channel_base, channel_max)
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.mask_classes = check_mask_classes(mask_classes)
        out_rgb = img_channels + mask_classes
        self.blocks = nn.ModuleDict()                                     # "b4", "b8", ..., f"b{R}"
        in_channels = 0
        for res in [2 ** i for i in range(2, log2 + 1)]:
            out_channels = channels_at(res, channel_base, channel_max)
            self.blocks[f"b{res}"] = SynthesisBlock(in_channels, out_channels, w_dim, res, out_rgb, conv_clamp)
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
        if self.mask_classes:
            c = self.img_channels
            img = torch.cat([img[:, :c].float(), mask_activation(img[:, c:])], dim=1)   # [N, C + K, R, R]
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
                 c_dim: int = 0,                # label width (0 = unconditional; StyleGAN2-ADA conditioning)
                 label_encoding: str = "none",  # "none" (official) or "fourier" (continuous labels; label_features)
                 label_range=None):             # "fourier": (lo, hi) per label mapped to [0, 1]; None = as given
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self.img_resolution, self.img_channels, self.mask_classes = img_resolution, img_channels, mask_classes
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max, conv_clamp,
                                          mask_classes)
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
    """StyleGAN2 "resnet" discriminator: image [N, img_channels (+ mask_classes), R, R] -> logits [N, 1]. With
    mask_classes > 0 it judges image and mask together (FromRGB reads both). With c_dim > 0 it is the
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
                 mask_classes: int = 0,         # mask channels read after the image channels (0 = image only)
                 c_dim: int = 0,                # label width (0 = unconditional)
                 mapping_layers: int = 8,       # FC layers of the label mapping (as G's mapping)
                 label_encoding: str = "none",  # "none" (official) or "fourier" (as G's)
                 label_range=None):             # as G's
        super().__init__()
        log2 = check_network_size(img_resolution, img_channels, channel_base, channel_max)
        self.img_resolution, self.mask_classes = img_resolution, check_mask_classes(mask_classes)
        self.img_channels = img_channels + mask_classes                   # channels D reads
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
# Summary (python modules.py)

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


def main(argv=None) -> int:
    """Exit codes: 0, or 2 for a usage error (one line)."""
    import config                                      # the command-line style every program shares
    parser = config.Parser(prog="modules.py",
                           description="Print the StyleGAN2 G and D layer tables and parameter counts.")
    parser.add_argument("--resolution", type=int, default=256, help="image resolution (power of two)")
    parser.add_argument("--img_channels", "--channels", type=int, default=1, help="image channels")
    parser.add_argument("--channel_base", type=int, default=16384, help="channel scale")
    parser.add_argument("--channel_max", type=int, default=512, help="max channels per layer")
    parser.add_argument("--mapping_layers", type=int, default=2,
                        help="mapping-network depth (2 as train.py's presets; 8 in the paper)")
    try:
        args = parser.parse_args(argv)
        G = Generator(img_resolution=args.resolution, img_channels=args.img_channels,
                      mapping_layers=args.mapping_layers, channel_base=args.channel_base, channel_max=args.channel_max)
        D = Discriminator(img_resolution=args.resolution, img_channels=args.img_channels,
                          channel_base=args.channel_base, channel_max=args.channel_max)
    except ValueError as e:                            # config.ConfigError is a ValueError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'layer':<24}{'output shape':<22}{'params':>12}")
    for net, name, shape, params in summary_rows(G, D):
        print(f"{net}.{name:<22}{shape:<22}{params:>12,}")
    print(f"\nG total {count_params(G):,} parameters    D total {count_params(D):,} parameters")
    print(f"num_ws = {G.num_ws}, mapping layers = {args.mapping_layers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
