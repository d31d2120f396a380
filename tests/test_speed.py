"""The fused layer formulation of modules.py and ops.py (gains folded into weights, bias inside the
convolution, noise in the demodulation's multiply-add, in-place leaky ReLU, 1x1 convolutions of NHWC
activations as matrix products, one convolution_backward call in first-order passes, no unused weight
gradients) computes the same functions as the reference one of tests/reference.py (one op per step, PyTorch's
own convolution gradients): images, first-order gradients, and the R1 and path-length gradients (second order,
where the first pass skips the unused weight gradients), in float64, in both memory layouts."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import modules
import reference
from modules import Discriminator, Generator


def _grads(params):
    """Gradients, zeros where a parameter gets none (D's last bias does not move the R1 gradient)."""
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def _passes(G, D, z, reals, use_reference: bool):
    out = {}
    with reference.use("layers", "conv") if use_reference else contextlib.nullcontext():
        torch.manual_seed(1)
        img = G(z)
        out["img"] = img.detach().clone()
        G.zero_grad(), D.zero_grad()
        (F.softplus(-D(img)).mean() + F.softplus(D(reals)).mean()).backward()
        out["step"] = _grads([*G.parameters(), *D.parameters()])
        D.zero_grad()
        x = reals.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x).sum(), [x], create_graph=True)
        g.square().sum().backward()
        out["r1"] = _grads(D.parameters())
        G.zero_grad()
        ws = G.mapping(z).detach().requires_grad_(True)
        torch.manual_seed(2)
        img = G.synthesis(ws)
        (g,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), [ws], create_graph=True)
        g.square().sum().backward()
        out["pl"] = _grads(G.synthesis.parameters())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fused_layers_equal_reference(memory_format):
    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16).double()
    D = Discriminator(img_resolution=16, channel_base=128, channel_max=16).double()
    with torch.no_grad():                                  # biases and noise strengths away from their zero init
        for p in [*G.parameters(), *D.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    G.to(memory_format=memory_format), D.to(memory_format=memory_format)
    z = torch.randn(4, 16, dtype=torch.float64)
    reals = torch.randn(4, 1, 16, 16, dtype=torch.float64).contiguous(memory_format=memory_format)
    ref, fused = _passes(G, D, z, reals, True), _passes(G, D, z, reals, False)
    torch.testing.assert_close(fused["img"], ref["img"], rtol=1e-10, atol=1e-12)
    for key in ("step", "r1", "pl"):
        assert len(fused[key]) == len(ref[key])
        for a, b in zip(fused[key], ref[key]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_conv2d_layer_keeps_channels_last():
    """1x1 convolutions run as a matrix product: an NHWC input gives an NHWC output (no layout copies)."""
    layer = modules.Conv2dLayer(1, 8, 1, activation="lrelu").to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    with reference.use("layers", "conv"):
        torch.testing.assert_close(y, layer(x))
