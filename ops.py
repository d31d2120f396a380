"""Low-level tensor operations of the StyleGAN2 networks, in pure PyTorch (no compiled extensions).

Owns: convolutions whose gradients of every order are again plain convolutions (conv2d, conv_transpose2d),
separable FIR resampling as sums of shifted slices (fir2d, blur2d, upsample2d, downsample2d,
conv2d_resample, gaussian_blur), bias + activation (bias_act), the modulated/demodulated convolution (modulated_conv2d),
minibatch standard deviation and 2nd-moment normalization, and the constants they use. Each operation has
one form here; the slower forms that pin their equivalence live in tests/reference.py.
Does not own the nn.Module networks that compose them (modules.py) or the augmentation pipe (augment.py).

References: Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2), and
Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data" (StyleGAN2-ADA), whose
official code keeps the same split (torch_utils/ops beside training/networks.py).
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

LRELU_SLOPE = 0.2              # leaky ReLU negative slope (StyleGAN, sec. 2)
LRELU_GAIN = math.sqrt(2)      # He gain that keeps the activation variance of a leaky ReLU layer
DEMOD_EPS = 1e-8               # demodulation epsilon, StyleGAN2 eq. 3
FIR_TAPS = (1, 3, 3, 1)        # binomial low-pass filter for all resampling (StyleGAN2 appendix B)


# ----------------------------------------------------------------------------------------------
# Convolutions whose every derivative order is again a plain convolution
#
# R1 and path-length regularization differentiate through the networks twice. PyTorch's generic
# double backward of a convolution calls the convolution kernels with weight- and gradient-shaped
# operands in unusual roles, which have no fast kernels (on a GPU the two regularizer passes were many
# times a plain D or G step; docs/benchmarks.md). Here the gradient of a convolution is written as the adjoint
# convolution plus a weight-gradient op, and the gradient of that op as two more convolutions, so every
# order of differentiation runs as ordinary convolutions. Same function as F.conv2d / F.conv_transpose2d
# with PyTorch's own gradients (tests/reference.py), tested in float64 to third order.

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
        ctx.spec = spec
        return _conv_plain(x, w, spec, b)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        spec = ctx.spec
        need = [_grad_used(ctx, i) for i in range(3)]
        if not torch.is_grad_enabled() and spec.stride == (1, 1) and not spec.transpose:
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


def _pair(v) -> tuple:
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv(x: torch.Tensor, w: torch.Tensor, spec: ConvSpec, b: torch.Tensor = None) -> torch.Tensor:
    # Compiled graphs (train.py --compile) serve first-order steps only, where PyTorch's own gradients are
    # what _Conv computes; without a gradient to take, the plain convolution is all there is.
    if torch.compiler.is_compiling() or not torch.is_grad_enabled() \
            or not (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
        return _conv_plain(x, w, spec, b)
    if torch.is_autocast_enabled(x.device.type):       # autocast does not see inside a Function: cast here
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w, b = x.to(dtype), w.to(dtype), (b.to(dtype) if b is not None else None)
    return _Conv.apply(x, w, b, spec)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, groups: int = 1, bias=None) -> torch.Tensor:
    """F.conv2d without dilation, with fast higher-order gradients (see above)."""
    if w.shape[2:] == (1, 1) and stride == 1 and padding == 0 and groups == 1 \
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
# grouped (depthwise) convolution, whose higher derivatives were the slow part of R1 and path length on a
# GPU (docs/benchmarks.md), and a form that torch.compile fuses into one kernel. A pass is linear in x, so its
# gradient is the adjoint pass (taps flipped, up and down swapped) and every derivative order is again a
# slice sum (_Fir2d). The depthwise-convolution form of the same functions is the reference in
# tests/reference.py.

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


def blur2d(x: torch.Tensor, f: torch.Tensor, pad: int, gain: float = 1.0, stride: int = 1) -> torch.Tensor:
    """Filter every channel of x with the separable 2D kernel f [K, K] (fir_kernel's) times gain after
    zero-padding `pad` on each side, keeping every stride-th pixel."""
    return fir2d(x, *_separable(f, gain), FirSpec(1, stride, pad, pad))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of every channel of x [N, C, H, W] with standard deviation sigma pixels (taps out to
    3 sigma, normalized to unit sum), edges extended by replication so that a constant stays constant."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-0.5 * (t / sigma) ** 2)
    taps = taps / taps.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return fir2d(x, taps, taps, FirSpec(1, 1, 0, 0))


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """x2 upsampling: zero insertion then FIR low-pass with gain 4, centred. [N,C,H,W] -> [N,C,2H,2W]
    (a stride-2 transposed convolution with the filter; padding 1 crops the 4-tap filter's overhang so that
    pixel centres stay aligned)."""
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
        if k == 1:
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
    fused=False: it was the faster of the two on the GPU and the CPU measured (docs/benchmarks.md). The gain and
    the noise ride on the demodulation's multiply (one multiply-add over the output, as StyleGAN2-ADA's fma).
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
