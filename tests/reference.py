"""Reference forms of the operations in ops.py and of the layer forwards in modules.py, kept only so that
the tests can pin the product's one form against them: PyTorch's own convolutions and gradients, FIR
resampling as depthwise convolutions, and every layer as one op per step of its formula. The product
never imports this file.

`use(*forms)` runs a with-block with some reference forms swapped into ops, modules and augment:
  "conv"    ops.conv2d / conv_transpose2d -> F.conv2d / F.conv_transpose2d (PyTorch's gradients, no 1x1 shortcut)
  "fir"     blur2d / upsample2d / downsample2d / conv2d_resample and augment's _sep_conv -> depthwise convolutions
  "layers"  FullyConnectedLayer / Conv2dLayer / SynthesisLayer forwards and modulated_conv2d -> one op per step
The reference functions call one another through `ops.` at run time, so the forms combine.
"""

import contextlib

import torch
import torch.nn.functional as F

import augment
import modules
import ops

# ----------------------------------------------------------------------------------------------
# Convolutions with PyTorch's own gradients


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, groups: int = 1, bias=None) -> torch.Tensor:
    return F.conv2d(x, w, bias, stride, padding, 1, groups)


def conv_transpose2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, output_padding=0,
                     groups: int = 1) -> torch.Tensor:
    return F.conv_transpose2d(x, w, None, stride, padding, output_padding, groups)


# ----------------------------------------------------------------------------------------------
# FIR resampling as depthwise convolutions

def _depthwise(f: torch.Tensor, channels: int, x: torch.Tensor) -> torch.Tensor:
    return f.to(device=x.device, dtype=x.dtype).expand(channels, 1, *f.shape)  # [C, 1, K, K]


def blur2d(x: torch.Tensor, f: torch.Tensor, pad: int, gain: float = 1.0, stride: int = 1) -> torch.Tensor:
    c = x.shape[1]
    return F.conv2d(x, _depthwise(f * gain, c, x), stride=stride, padding=pad, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    # A stride-2 transposed conv with the filter is zero insertion + filtering; padding=1 crops the
    # 4-tap filter's overhang so that pixel centres stay aligned (output = 2H exactly).
    c = x.shape[1]
    return F.conv_transpose2d(x, _depthwise(f * 4, c, x), stride=2, padding=1, groups=c)


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return blur2d(x, f, pad=1, stride=2)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor = None, up: int = 1, down: int = 1,
                    groups: int = 1, bias: torch.Tensor = None) -> torch.Tensor:
    """ops.conv2d_resample with the depthwise blur and without the 1x1 stride-2 shortcut."""
    k = w.shape[-1]
    f = ops.fir_kernel() if f is None else f
    if up == 1 and down == 1:
        return ops.conv2d(x, w, padding=k // 2, groups=groups, bias=bias)
    if up == 2:
        assert bias is None
        o, i = w.shape[0] // groups, w.shape[1]
        w = w.reshape(groups, o, i, k, k).transpose(1, 2).reshape(groups * i, o, k, k)
        x = ops.conv_transpose2d(x, w, stride=2, groups=groups)
        return blur2d(x, f, pad=(f.shape[-1] + 1 - k) // 2, gain=4)
    assert down == 2
    x = blur2d(x, f, pad=k // 2 + (f.shape[-1] - 2) // 2)
    return ops.conv2d(x, w, stride=2, groups=groups, bias=bias)


def sep_conv(x: torch.Tensor, f: torch.Tensor, stride: int = 1, transpose: bool = False, pad: int = 0):
    """augment._sep_conv as [1, 1, 1, L] and [1, 1, L, 1] convolutions."""
    n, c, h, w = x.shape
    x = x.reshape(n * c, 1, h, w)
    fx = f.to(x.dtype)[None, None, None, :]
    fy = f.to(x.dtype)[None, None, :, None]
    if transpose:
        x = F.conv_transpose2d(x, fx * 2, stride=(1, 2), padding=(0, pad))
        x = F.conv_transpose2d(x, fy * 2, stride=(2, 1), padding=(pad, 0))
    else:
        x = F.conv2d(x, fx, stride=(1, stride))
        x = F.conv2d(x, fy, stride=(stride, 1))
    return x.reshape(n, c, *x.shape[-2:])


# ----------------------------------------------------------------------------------------------
# Layers, one op per step of the formula (gains, bias, activation, noise each on their own)

def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: int = 1, f: torch.Tensor = None, fused: bool = False, gain: float = 1.0,
                     noise: torch.Tensor = None) -> torch.Tensor:
    n, i = x.shape[:2]
    o, _, k, _ = weight.shape
    if fused:
        w = weight[None] * styles[:, None, :, None, None]                 # [N, O, I, k, k]
        if demodulate:
            w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + ops.DEMOD_EPS).rsqrt()
        x = x.reshape(1, n * i, *x.shape[2:])
        x = ops.conv2d_resample(x, (w * gain).reshape(n * o, i, k, k), f, up=up, groups=n)
        x = x.reshape(n, o, *x.shape[2:])
    else:
        x = x * styles[:, :, None, None].to(x.dtype)
        x = ops.conv2d_resample(x, weight.to(x.dtype), f, up=up)
        if demodulate:
            dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).T + ops.DEMOD_EPS).rsqrt()  # [N, O]
            x = x * dcoefs[:, :, None, None].to(x.dtype)
        x = x * gain if gain != 1 else x
    return x if noise is None else x + noise.to(x.dtype)


def fully_connected(layer: modules.FullyConnectedLayer, x: torch.Tensor) -> torch.Tensor:
    w = layer.weight * layer.weight_gain
    b = layer.bias * layer.bias_gain if layer.bias is not None else None
    if layer.activation == "linear":
        return F.linear(x, w, b)
    return ops.bias_act(F.linear(x, w), b, "lrelu", ops.LRELU_GAIN)


def conv2d_layer(layer: modules.Conv2dLayer, x: torch.Tensor) -> torch.Tensor:
    w = (layer.weight * layer.weight_gain).to(x.dtype)
    x = ops.conv2d_resample(x, w, layer.resample_filter, down=layer.down)
    b = layer.bias * layer.bias_gain if layer.bias is not None else None
    return ops.bias_act(x, b, layer.activation, layer.act_gain, layer.act_clamp)


def synthesis_layer(layer: modules.SynthesisLayer, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                    fused_modconv: bool = False) -> torch.Tensor:
    styles = layer.affine(w)
    x = modulated_conv2d(x, layer.weight * layer.weight_gain, styles, up=layer.up, f=layer.resample_filter,
                         fused=fused_modconv)
    if noise_mode == "random":
        noise = torch.randn(x.shape[0], 1, layer.resolution, layer.resolution, device=x.device, dtype=x.dtype)
        x = x + noise * layer.noise_strength.to(x.dtype)
    elif noise_mode == "const":
        x = x + layer.noise_const.to(x.dtype) * layer.noise_strength.to(x.dtype)
    return ops.bias_act(x, layer.bias, "lrelu", ops.LRELU_GAIN, layer.conv_clamp)


# ----------------------------------------------------------------------------------------------
# Swapping the reference forms in

def _functions(**refs) -> list:
    """(owner, name, reference) for every binding of ops' function `name` (modules and augment import by name)."""
    out = []
    for name, ref in refs.items():
        original = getattr(ops, name)
        out += [(owner, name, ref) for owner in (ops, modules, augment) if getattr(owner, name, None) is original]
    return out


def _swaps(form: str) -> list:
    if form == "conv":
        return _functions(conv2d=conv2d, conv_transpose2d=conv_transpose2d)
    if form == "fir":
        return _functions(blur2d=blur2d, upsample2d=upsample2d, downsample2d=downsample2d,
                          conv2d_resample=conv2d_resample) + [(augment, "_sep_conv", sep_conv)]
    if form == "layers":
        return _functions(modulated_conv2d=modulated_conv2d) + [
            (modules.FullyConnectedLayer, "forward", fully_connected),
            (modules.Conv2dLayer, "forward", conv2d_layer),
            (modules.SynthesisLayer, "forward", synthesis_layer)]
    raise ValueError(f"unknown reference form {form!r}; use conv, fir or layers")


@contextlib.contextmanager
def use(*forms: str):
    """Run the with-block with the named reference forms in place of the product's (see the docstring)."""
    saved = []
    try:
        for form in forms:
            for owner, name, ref in _swaps(form):
                saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, ref)
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
