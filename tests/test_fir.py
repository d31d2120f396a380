"""FIR resampling as slice sums (ops.fir2d) against the depthwise-convolution reference
(tests/reference.py, use("fir")): the same function and the same derivatives to third order, in the ops,
in G and D, and in the augmentation pipe's resampling."""

import pytest
import torch

import augment
import modules
import ops
import reference
from ops import FirSpec, blur2d, conv2d_resample, downsample2d, fir_kernel, upsample2d

F64 = dict(dtype=torch.float64)
ASYMMETRIC = (1.0, 2.0, 4.0, 1.0)        # catches a filter applied flipped, which [1, 3, 3, 1] would hide


def fir_ops(f):
    """name -> one-argument function of x [N, 3, H, W], every use of the FIR filter in the networks."""
    gen = torch.Generator().manual_seed(1)
    w3 = torch.randn(4, 3, 3, 3, generator=gen, **F64)
    w1 = torch.randn(4, 3, 1, 1, generator=gen, **F64)
    return {
        "blur": lambda x: blur2d(x, f, pad=1),
        "blur_pad2_gain4": lambda x: blur2d(x, f, pad=2, gain=4),
        "blur_stride2": lambda x: blur2d(x, f, pad=0, stride=2),
        "upsample2d": lambda x: upsample2d(x, f),
        "downsample2d": lambda x: downsample2d(x, f),
        "conv_up": lambda x: conv2d_resample(x, w3, f, up=2),
        "conv_down": lambda x: conv2d_resample(x, w3, f, down=2),
        "conv1x1_down": lambda x: conv2d_resample(x, w1, f, down=2),
    }


def derivatives(op, x):
    """op(x) and three orders of derivatives of nonlinear functions of it, all w.r.t. x."""
    x = x.detach().requires_grad_(True)
    y = op(x)
    (g1,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    (g2,) = torch.autograd.grad((g1.sin() * x).sum(), [x], create_graph=True)
    (g3,) = torch.autograd.grad(g2.square().sum(), [x])
    return [y, g1, g2, g3]


@pytest.mark.parametrize("taps", [ops.FIR_TAPS, ASYMMETRIC])
@pytest.mark.parametrize("name", list(fir_ops(fir_kernel())))
def test_slices_equal_conv_to_third_order(name, taps):
    f = fir_kernel(taps).double()
    op = fir_ops(f)[name]
    for shape in [(2, 3, 8, 8), (1, 3, 7, 9)]:                   # even, odd and non-square
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), **F64)
        with reference.use("fir"):
            ref = derivatives(op, x)
        new = derivatives(op, x)
        for a, b in zip(new, ref):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [FirSpec(1, 1, 1, 1), FirSpec(1, 2, 1, 1), FirSpec(1, 2, 0, -1),
                                  FirSpec(2, 1, 2, 1), FirSpec(2, 1, 0, -1), FirSpec(1, 1, -1, 3)])
def test_fir2d_gradcheck_to_third_order(spec):
    fy = torch.tensor([1.0, 2.0, 4.0, 1.0], **F64)
    fx = torch.tensor([0.5, -1.0, 3.0], **F64)                   # different lengths along H and W
    x = torch.randn(2, 2, 6, 7, **F64, requires_grad=True)

    def op(t):
        return ops.fir2d(t, fy, fx, spec)

    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))

    def grad_of_square(t):                                       # its second derivative is op's third order
        (g,) = torch.autograd.grad(op(t).square().sum(), [t], create_graph=True)
        return g

    assert torch.autograd.gradgradcheck(grad_of_square, (x,))


def test_adjoint_spec_is_the_transpose():
    """<A x, y> = <x, A^T y> for the pass and its adjoint (taps flipped), and A^T maps back to x's size."""
    taps = torch.tensor([1.0, 2.0, 4.0, 1.0], **F64)
    for n in (5, 6, 9):
        for spec in [FirSpec(1, 2, 1, 1), FirSpec(2, 1, 2, 1), FirSpec(1, 1, 2, -1), FirSpec(2, 1, -1, 0)]:
            x = torch.randn(1, 1, n, 3, **F64)
            ax = ops._fir1d(x, taps, 2, spec)
            y = torch.randn_like(ax)
            aty = ops._fir1d(y, taps.flip(0), 2, spec.adjoint(n, 4))
            assert aty.shape == x.shape
            torch.testing.assert_close((ax * y).sum(), (x * aty).sum())


def test_compile_form_equals_slice_form():
    """_fir1d_functional (what torch.compile traces) is the same function as the slice sums."""
    taps = torch.tensor([1.0, 2.0, 4.0, 1.0], **F64)
    x = torch.randn(2, 3, 7, 8, **F64)
    for spec in [FirSpec(1, 2, 1, 1), FirSpec(2, 1, 2, 1), FirSpec(1, 1, 2, -1)]:
        for dim in (2, 3):
            torch.testing.assert_close(ops._fir1d_functional(x, taps, dim, spec),
                                       ops._fir1d(x, taps.unbind(), dim, spec), rtol=0, atol=1e-14)


def test_channels_last_stays_channels_last():
    f = fir_kernel()
    x = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    for y in (upsample2d(x, f), downsample2d(x, f), blur2d(x, f, pad=2)):
        assert y.is_contiguous(memory_format=torch.channels_last)
        (g,) = torch.autograd.grad(y.square().sum(), [x])
        assert g.is_contiguous(memory_format=torch.channels_last)


def test_networks_equal_between_implementations():
    """G's image, D's logits, and the R1 and path-length gradients of every parameter (float64)."""
    torch.manual_seed(0)
    G = modules.Generator(z_dim=8, w_dim=8, img_resolution=16, img_channels=1, mapping_layers=2,
                          channel_base=64, channel_max=8).double()
    D = modules.Discriminator(img_resolution=16, img_channels=1, channel_base=64, channel_max=8,
                              mbstd_group_size=2).double()
    reals = torch.randn(4, 1, 16, 16, **F64)
    ws = G.mapping(torch.randn(2, 8, **F64)).detach()

    def run():
        img = G.synthesis(ws, noise_mode="const")
        x = reals.clone().requires_grad_(True)
        logits = D(x)
        (g,) = torch.autograd.grad(logits.sum(), [x], create_graph=True)
        w = ws.clone().requires_grad_(True)
        fake = G.synthesis(w, noise_mode="const")
        (gw,) = torch.autograd.grad((fake * torch.linspace(-1, 1, 256, **F64).reshape(1, 1, 16, 16)).sum(), [w],
                                    create_graph=True)
        loss = g.square().sum() + gw.square().sum() + D(fake).sum()
        params = list(D.parameters()) + list(G.synthesis.parameters())
        return [img, logits, loss] + list(torch.autograd.grad(loss, params, allow_unused=True))

    with reference.use("fir"):
        ref = run()
    for a, b in zip(run(), ref):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_augment_resampling_equal_between_implementations():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 16, 16, generator=gen, **F64)
    G_inv = torch.eye(3, **F64).repeat(3, 1, 1)
    G_inv[:, :2, :] += torch.randn(3, 2, 3, generator=gen, **F64) * 0.1       # rotate, shear, shift a little
    lowpass = augment.windowed_sinc(12, 0.25).double()

    def op(t):
        return augment.resample(t, G_inv, lowpass)

    with reference.use("fir"):
        ref = derivatives(op, x)
    for a, b in zip(derivatives(op, x), ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    pipe = augment.AugmentPipe(img_channels=1, pipeline="bgc", p=1.0)
    images = torch.randn(4, 1, 16, 16)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        with reference.use("fir"):
            ref = pipe(images)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        torch.testing.assert_close(pipe(images), ref, rtol=1e-5, atol=1e-5)


def test_reference_forms_are_swapped_in_and_back():
    """reference.use reaches every binding the networks and the pipe call (a comparison with nothing swapped
    in could not fail), and restores them."""
    product = (ops.blur2d, modules.upsample2d, ops.conv2d_resample, modules.conv2d_resample, augment._sep_conv)
    with reference.use("fir"):
        assert (ops.blur2d, modules.upsample2d, ops.conv2d_resample, modules.conv2d_resample, augment._sep_conv) == (
            reference.blur2d, reference.upsample2d, reference.conv2d_resample, reference.conv2d_resample,
            reference.sep_conv)
    with reference.use("conv", "layers"):
        assert (ops.conv2d, augment.conv2d, modules.modulated_conv2d) == (
            reference.conv2d, reference.conv2d, reference.modulated_conv2d)
        assert modules.SynthesisLayer.forward is reference.synthesis_layer
    assert (ops.blur2d, modules.upsample2d, ops.conv2d_resample, modules.conv2d_resample, augment._sep_conv) == product
    assert ops.conv2d is not reference.conv2d and modules.SynthesisLayer.forward is not reference.synthesis_layer
