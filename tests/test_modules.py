"""Behaviour of the StyleGAN2 networks in modules.py and of the operations they compose (ops.py), on tiny
configs; the convolutions' gradients against PyTorch's own (tests/reference.py)."""

import contextlib
import math

import pytest
import torch

import ops
import reference
from modules import Conv2dLayer, Discriminator, FullyConnectedLayer, Generator, SynthesisLayer, count_params
from ops import conv2d_resample, downsample2d, fir_kernel, minibatch_stddev, modulated_conv2d, upsample2d


def tiny_G(res=16, img_channels=1, **kw):
    args = dict(z_dim=16, w_dim=16, img_resolution=res, img_channels=img_channels, mapping_layers=2,
                channel_base=8 * res, channel_max=16)
    args.update(kw)
    return Generator(**args)


def tiny_D(res=16, img_channels=1, **kw):
    args = dict(img_resolution=res, img_channels=img_channels, channel_base=8 * res, channel_max=16)
    args.update(kw)
    return Discriminator(**args)


# ----------------------------------------------------------------------------------------------
# Architecture: parameter counts

def official_param_counts(res, img_channels, channel_base, channel_max, mapping_layers, z_dim=512, w_dim=512):
    """(G, D) trainable parameters of the official StyleGAN2-ADA "skip" G / "resnet" D, derived
    independently of modules.py from the official StyleGAN2-ADA code's layer list."""
    ch = lambda r: min(channel_base // r, channel_max)
    fc = lambda i, o: i * o + o                                   # weight + bias
    conv = lambda i, o, k, bias=True: o * i * k * k + (o if bias else 0)
    synth_layer = lambda i, o: fc(w_dim, i) + conv(i, o, 3) + 1   # affine, weight + bias, noise_strength
    torgb = lambda i: fc(w_dim, i) + conv(i, img_channels, 1)
    g = fc(z_dim, w_dim) + (mapping_layers - 1) * fc(w_dim, w_dim)
    g += ch(4) * 16 + synth_layer(ch(4), ch(4)) + torgb(ch(4))
    d = conv(img_channels, ch(res), 1)                            # FromRGB at the top resolution
    r = 8
    while r <= res:
        g += synth_layer(ch(r // 2), ch(r)) + synth_layer(ch(r), ch(r)) + torgb(ch(r))
        d += conv(ch(r), ch(r), 3) + conv(ch(r), ch(r // 2), 3) + conv(ch(r), ch(r // 2), 1, bias=False)
        r *= 2
    d += conv(ch(4) + 1, ch(4), 3) + fc(ch(4) * 16, ch(4)) + fc(ch(4), 1)
    return g, d


def test_param_counts_match_spec_size_check():
    G = Generator(z_dim=512, w_dim=512, img_resolution=256, img_channels=1, mapping_layers=8,
                  channel_base=16384, channel_max=512)
    D = Discriminator(img_resolution=256, img_channels=1, channel_base=16384, channel_max=512, mbstd_group_size=4)
    assert G.num_ws == 14
    assert count_params(G) == 24_762_452
    assert count_params(D) == 24_000_961


def test_param_counts_match_official_1024_auto_log():
    # Totals printed by the official StyleGAN2-ADA training script for --cfg=auto at 1024 px, RGB:
    # channel_base 32768, 2 mapping layers.
    G = Generator(img_resolution=1024, img_channels=3, mapping_layers=2, channel_base=32768)
    D = Discriminator(img_resolution=1024, img_channels=3, channel_base=32768)
    assert (count_params(G), count_params(D)) == (28_794_124, 29_012_513)


@pytest.mark.parametrize("res,img_channels,channel_base,channel_max,mapping_layers", [
    (8, 1, 16384, 512, 8), (32, 3, 16384, 512, 2), (64, 1, 32768, 512, 4), (128, 3, 16384, 256, 1),
    (512, 1, 32768, 512, 2), (256, 3, 8192, 128, 8),
])
def test_param_counts_match_official_architecture(res, img_channels, channel_base, channel_max, mapping_layers):
    G = Generator(img_resolution=res, img_channels=img_channels, mapping_layers=mapping_layers,
                  channel_base=channel_base, channel_max=channel_max)
    D = Discriminator(img_resolution=res, img_channels=img_channels, channel_base=channel_base,
                      channel_max=channel_max)
    assert (count_params(G), count_params(D)) == official_param_counts(
        res, img_channels, channel_base, channel_max, mapping_layers)
    assert G.num_ws == 2 * int(math.log2(res)) - 2


# ----------------------------------------------------------------------------------------------
# Shapes, finiteness, gradients

@pytest.mark.parametrize("res", [8, 16, 32, 64, 128, 256, 512, 1024])
@pytest.mark.parametrize("img_channels", [1, 3])
def test_output_shapes_every_resolution(res, img_channels, device):
    G = tiny_G(res, img_channels, channel_base=4 * res, channel_max=8).to(device)
    D = tiny_D(res, img_channels, channel_base=4 * res, channel_max=8).to(device)
    z = torch.randn(2, 16, device=device)
    ws = G.mapping(z)
    assert ws.shape == (2, G.num_ws, 16) and G.num_ws == 2 * int(math.log2(res)) - 2
    img = G.synthesis(ws)
    assert img.shape == (2, img_channels, res, res)
    logits = D(img)
    assert logits.shape == (2, 1)
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()


def test_every_parameter_gets_a_finite_gradient(device):
    G, D = tiny_G(32).to(device), tiny_D(32).to(device)
    img = G(torch.randn(4, 16, device=device), noise_mode="random")
    loss = torch.nn.functional.softplus(-D(img)).mean()
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_bf16_autocast_forward_and_backward(device):
    G, D = tiny_G(16).to(device), tiny_D(16).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        ws = G.mapping(torch.randn(4, 16, device=device), truncation_psi=0.7, update_w_avg=True)
        assert ws.dtype == torch.float32 and G.mapping.w_avg.dtype == torch.float32
        img = G.synthesis(ws)
        loss = torch.nn.functional.softplus(-D(img)).mean()
    loss.backward()
    assert img.dtype == torch.float32                    # the ToRGB sum is kept in full precision
    assert torch.isfinite(img).all() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in G.parameters())


def test_initial_output_is_image_scaled(device):
    # The sum of ToRGB outputs at initialization should be of order one, like a [-1, 1] image.
    G = Generator(z_dim=64, w_dim=64, img_resolution=32, mapping_layers=2, channel_base=1024, channel_max=64)
    img = G.to(device)(torch.randn(16, 64, device=device))
    assert 0.1 < img.std().item() < 3.0


# ----------------------------------------------------------------------------------------------
# Layers: equalized learning rate, modulation, resampling

@pytest.mark.parametrize("lr_mul", [1.0, 0.01])
def test_fully_connected_equalized_lr(lr_mul):
    fc = FullyConnectedLayer(400, 300, bias_init=0.5, lr_mul=lr_mul)
    assert fc.weight.std().item() == pytest.approx(1 / lr_mul, rel=0.02)     # stored N(0, 1/lr_mul)
    assert fc.weight_gain == pytest.approx(lr_mul / math.sqrt(400))          # run-time scale
    assert fc.bias_gain == lr_mul
    x = torch.randn(8, 400)
    expected = x @ (fc.weight * lr_mul / math.sqrt(400)).T + fc.bias * lr_mul
    torch.testing.assert_close(fc(x), expected)
    assert fc(x).std().item() == pytest.approx(1.0, abs=0.15)                 # unit gain at init


def test_mapping_layers_use_lr_mul_001():
    G = tiny_G(16)
    for layer in G.mapping.layers:
        assert layer.weight_gain == pytest.approx(0.01 / math.sqrt(16)) and layer.bias_gain == 0.01


@pytest.mark.parametrize("lr_mul", [1.0, 0.1])
def test_conv_equalized_lr(lr_mul):
    conv = Conv2dLayer(32, 48, 3, lr_mul=lr_mul)
    assert conv.weight.std().item() == pytest.approx(1 / lr_mul, rel=0.03)
    assert conv.weight_gain == pytest.approx(lr_mul / math.sqrt(32 * 9))
    x = torch.randn(2, 32, 8, 8)
    expected = torch.nn.functional.conv2d(x, conv.weight * conv.weight_gain, conv.bias * lr_mul, padding=1)
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("fused", [True, False])
def test_demodulated_conv_keeps_unit_variance(fused):
    x = torch.randn(8, 64, 16, 16)
    weight = torch.randn(64, 64, 3, 3)
    styles = torch.randn(8, 64).abs() + 0.1             # arbitrary per-sample scales
    y = modulated_conv2d(x, weight, styles, demodulate=True, fused=fused)
    assert y.shape == (8, 64, 16, 16)
    interior = y[..., 1:-1, 1:-1]                       # zero padding lowers the border variance
    assert interior.var().item() == pytest.approx(1.0, abs=0.1)
    assert not modulated_conv2d(x, weight, styles * 10, demodulate=False).var().item() == pytest.approx(1, abs=0.5)
    # With x2 upsampling the gain-4 FIR keeps the DC level, so the output has the variance of the
    # upsampled (smoothed) unit-variance input.
    f = fir_kernel()
    y_up = modulated_conv2d(x, weight, styles, demodulate=True, up=2, f=f, fused=fused)[..., 2:-2, 2:-2]
    assert y_up.var().item() == pytest.approx(upsample2d(x, f)[..., 2:-2, 2:-2].var().item(), rel=0.1)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_fused_and_unfused_modulated_conv_agree(up, demodulate):
    x = torch.randn(3, 5, 8, 8, dtype=torch.float64)
    weight = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 5, dtype=torch.float64)
    f = fir_kernel().double()
    a = modulated_conv2d(x, weight, styles, demodulate, up=up, f=f, fused=True)
    b = modulated_conv2d(x, weight, styles, demodulate, up=up, f=f, fused=False)
    assert a.shape == (3, 7, 8 * up, 8 * up)
    torch.testing.assert_close(a, b)
    # ...and equal to a plain conv with each sample's own modulated, demodulated weight.
    w0 = weight * styles[0][None, :, None, None]
    if demodulate:
        w0 = w0 / w0.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
    torch.testing.assert_close(a[:1], conv2d_resample(x[:1], w0, f, up=up))


def test_resampling_is_centred_and_preserves_constants():
    f = fir_kernel().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    # Centred filters commute with mirroring (a half-pixel shift would break this).
    for op in (lambda t: upsample2d(t, f), lambda t: downsample2d(t, f)):
        torch.testing.assert_close(op(x.flip(-1)), op(x).flip(-1))
        torch.testing.assert_close(op(x.flip(-2)), op(x).flip(-2))
    for up, down in [(2, 1), (1, 2)]:
        torch.testing.assert_close(conv2d_resample(x.flip(-1), w.flip(-1), f, up=up, down=down),
                                   conv2d_resample(x, w, f, up=up, down=down).flip(-1))
    # Unit DC gain: a constant image stays constant away from the zero-padded border.
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(upsample2d(ones, f)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12, dtype=torch.float64))
    torch.testing.assert_close(downsample2d(ones, f)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2, dtype=torch.float64))
    assert fir_kernel().sum().item() == pytest.approx(1.0)


def test_conv_clamp_bounds_activations():
    layer = SynthesisLayer(8, 8, w_dim=4, resolution=8, conv_clamp=0.05)
    y = layer(torch.randn(2, 8, 8, 8) * 10, torch.randn(2, 4))
    assert y.abs().max().item() <= 0.05 + 1e-7
    assert (y.abs() == 0.05).any()                       # the clamp was actually reached


def test_image_is_the_sum_of_upsampled_torgb_outputs():
    # "skip" generator: img = up(up(rgb4) + rgb8) + rgb16, each up the FIR x2 upsampling.
    G = tiny_G(16)
    rgbs = []
    for block in G.synthesis.blocks.values():
        block.torgb.register_forward_hook(lambda module, inputs, output: rgbs.append(output))
    img = G(torch.randn(2, 16), noise_mode="const")
    f = fir_kernel()
    expected = upsample2d(upsample2d(rgbs[0], f) + rgbs[1], f) + rgbs[2]
    assert [r.shape[-1] for r in rgbs] == [4, 8, 16]
    torch.testing.assert_close(img, expected)


def test_resnet_discriminator_branches_are_scaled_by_sqrt_half():
    D = Discriminator(img_resolution=128, img_channels=1, channel_base=4096, channel_max=64)
    stds = []
    for block in D.blocks.values():
        assert block.skip.act_gain == pytest.approx(math.sqrt(0.5))
        assert block.conv1.act_gain == pytest.approx(math.sqrt(2) * math.sqrt(0.5))
        block.register_forward_hook(lambda module, inputs, output: stds.append(output.std().item()))
    D(torch.randn(16, 1, 128, 128))
    # With both branches scaled, activations neither grow nor vanish from block to block.
    assert all(0.5 < b / a < 1.5 for a, b in zip(stds, stds[1:])), stds


# ----------------------------------------------------------------------------------------------
# Mapping network: normalization, w_avg, truncation, style mixing

def test_z_is_normalized_by_second_moment():
    G = tiny_G(16)
    z = torch.randn(4, 16)
    torch.testing.assert_close(G.mapping(z), G.mapping(z * 7.5))


def test_w_avg_tracks_the_batch_mean_only_when_asked():
    G = tiny_G(16)
    z = torch.randn(8, 16)
    G.mapping(z)
    assert G.mapping.w_avg.abs().sum() == 0              # inference leaves w_avg alone
    ws = G.mapping(z, update_w_avg=True)
    torch.testing.assert_close(G.mapping.w_avg, 0.005 * ws[:, 0].mean(dim=0))   # lerp(mean, 0, 0.995)


def test_truncation_psi_zero_returns_w_avg():
    G = tiny_G(16)
    for _ in range(3):
        G.mapping(torch.randn(8, 16), update_w_avg=True)
    z = torch.randn(4, 16)
    w_avg = G.mapping.w_avg
    torch.testing.assert_close(G.mapping(z, truncation_psi=0.0), w_avg.expand(4, G.num_ws, -1))
    ws, ws_half = G.mapping(z), G.mapping(z, truncation_psi=0.5)
    torch.testing.assert_close(ws_half, w_avg + 0.5 * (ws - w_avg))
    cut = G.mapping(z, truncation_psi=0.0, truncation_cutoff=3)
    torch.testing.assert_close(cut[:, :3], w_avg.expand(4, 3, -1))
    torch.testing.assert_close(cut[:, 3:], ws[:, 3:])


def test_style_mixing_at_every_crossover():
    G = tiny_G(16)
    ws1, ws2 = G.mapping(torch.randn(2, 16)), G.mapping(torch.randn(2, 16))
    img1, img2 = G.synthesis(ws1, noise_mode="const"), G.synthesis(ws2, noise_mode="const")
    for cutoff in range(1, G.num_ws):
        mixed = torch.cat([ws1[:, :cutoff], ws2[:, cutoff:]], dim=1)
        img = G.synthesis(mixed, noise_mode="const")
        assert img.shape == img1.shape and torch.isfinite(img).all()
        assert not torch.allclose(img, img1) and not torch.allclose(img, img2)


def test_every_w_drives_the_image():
    G = tiny_G(16)
    ws = G.mapping(torch.randn(2, 16)).detach().requires_grad_(True)
    G.synthesis(ws, noise_mode="const").square().sum().backward()
    per_ws = ws.grad.abs().sum(dim=[0, 2])
    assert (per_ws > 0).all(), f"ws indices without effect: {torch.nonzero(per_ws == 0).flatten().tolist()}"


# ----------------------------------------------------------------------------------------------
# Noise modes

def _set_noise_strength(G, value):
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(value)


def test_noise_modes():
    G = tiny_G(16)
    _set_noise_strength(G, 0.5)
    ws = G.mapping(torch.randn(2, 16))
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"))
    assert not torch.allclose(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random"))
    none = G.synthesis(ws, noise_mode="none")
    assert not torch.allclose(none, G.synthesis(ws, noise_mode="const"))
    _set_noise_strength(G, 0.0)                          # 'none' equals any mode without noise
    torch.testing.assert_close(none, G.synthesis(ws, noise_mode="random"))


def test_noise_strength_starts_at_zero_and_const_noise_is_saved():
    G = tiny_G(16)
    strengths = [p for n, p in G.named_parameters() if n.endswith("noise_strength")]
    assert len(strengths) == 2 * 3 - 1 and all(s.item() == 0 for s in strengths)
    assert any(k.endswith("noise_const") for k in G.state_dict())
    assert "mapping.w_avg" in G.state_dict()


def test_state_dict_round_trip_is_exact(tmp_path):
    G, D = tiny_G(16), tiny_D(16)
    _set_noise_strength(G, 0.3)
    G.mapping(torch.randn(8, 16), update_w_avg=True)
    torch.save({"G": G.state_dict(), "D": D.state_dict()}, tmp_path / "nets.pt")
    state = torch.load(tmp_path / "nets.pt", weights_only=True)
    G2, D2 = tiny_G(16), tiny_D(16)
    G2.load_state_dict(state["G"])
    D2.load_state_dict(state["D"])
    z = torch.randn(4, 16)
    img = G(z, truncation_psi=0.7, noise_mode="const")
    torch.testing.assert_close(G2(z, truncation_psi=0.7, noise_mode="const"), img, rtol=0, atol=0)
    torch.testing.assert_close(D2(img), D(img), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Minibatch standard deviation

def test_minibatch_stddev_matches_definition():
    x = torch.randn(8, 6, 4, 4, dtype=torch.float64)
    y = minibatch_stddev(x, group_size=4)
    assert y.shape == (8, 7, 4, 4)
    torch.testing.assert_close(y[:, :6], x)
    for j in range(8):
        group = x[j % 2::2]                              # strided groups: samples j, j+2, j+4, j+6
        expected = (group.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(y[j, 6], expected.expand(4, 4))


def test_minibatch_stddev_group_shrinks_to_small_batches():
    D = tiny_D(16, mbstd_group_size=4)
    assert D(torch.randn(2, 1, 16, 16)).shape == (2, 1)
    assert D(torch.randn(1, 1, 16, 16)).shape == (1, 1)


# ----------------------------------------------------------------------------------------------
# Errors people see

@pytest.mark.parametrize("res", [0, 4, 100, 48, 255])
def test_bad_resolution_is_refused(res):
    with pytest.raises(ValueError, match=r"img_resolution must be a power of two >= 8.*got " + str(res)):
        Generator(img_resolution=res)
    with pytest.raises(ValueError, match=r"img_resolution must be a power of two >= 8"):
        Discriminator(img_resolution=res)


def test_bad_shapes_are_refused():
    G, D = tiny_G(16), tiny_D(16, mbstd_group_size=4)
    with pytest.raises(ValueError, match=r"z must have shape \[N, 16\].*got \[2, 15\]"):
        G.mapping(torch.randn(2, 15))
    with pytest.raises(ValueError, match=r"z must have shape"):
        G(torch.randn(16))
    with pytest.raises(ValueError, match=r"ws must have shape \[N, 6, 16\]"):
        G.synthesis(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"D expects images of shape \[N, 1, 16, 16\], got \[2, 3, 16, 16\]"):
        D(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"group size 4 does not divide the batch of 6"):
        D(torch.randn(6, 1, 16, 16))
    with pytest.raises(ValueError, match=r"noise_mode must be one of random, const, none"):
        G(torch.randn(2, 16), noise_mode="fixed")
    with pytest.raises(ValueError, match=r"truncation_cutoff must be in \[0, 6\]"):
        G.mapping(torch.randn(2, 16), truncation_psi=0.5, truncation_cutoff=9)
    with pytest.raises(ValueError, match=r"channel_base=8, channel_max=512 give no channels at 16 px"):
        Generator(img_resolution=16, channel_base=8)
    with pytest.raises(ValueError, match=r"img_channels must be a positive integer.*got 0"):
        Discriminator(img_resolution=16, img_channels=0)
    with pytest.raises(ValueError, match=r"mapping_layers must be >= 1, got 0"):
        Generator(img_resolution=16, mapping_layers=0)
    with pytest.raises(ValueError, match=r"mbstd_group_size must be >= 1, got 0"):
        Discriminator(img_resolution=16, mbstd_group_size=0)


# ----------------------------------------------------------------------------------------------
# Convolutions with regrouped higher-order gradients

CONV_CASES = [  # (transpose, in_ch, out_ch, k, stride, padding, groups, size)
    (False, 4, 6, 3, 1, 1, 1, 7),
    (False, 4, 6, 3, 2, 0, 2, 8),
    (False, 3, 3, 4, 2, 1, 3, 9),        # depthwise FIR-style downsampling, odd size
    (True, 4, 6, 3, 2, 0, 1, 5),
    (True, 4, 4, 4, 2, 1, 4, 6),         # depthwise x2 upsampling
    (True, 6, 4, 3, 2, 0, 2, 4),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CONV_CASES)
def test_regrad_conv_matches_torch_to_third_order(case):
    transpose, i, o, k, s, p, g, size = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, i, size, size, dtype=torch.float64, generator=gen, requires_grad=True)
    w_shape = (i, o // g, k, k) if transpose else (o, i // g, k, k)
    w = torch.randn(*w_shape, dtype=torch.float64, generator=gen, requires_grad=True)

    def run(lib):
        op = lib.conv_transpose2d if transpose else lib.conv2d
        y = op(x, w, stride=s, padding=p, groups=g)
        gx, gw = torch.autograd.grad(y.square().sum(), [x, w], create_graph=True)
        gx2, gw2 = torch.autograd.grad(gx.sin().sum() + gw.square().sum(), [x, w], create_graph=True)
        gx3, gw3 = torch.autograd.grad(gx2.square().sum() + gw2.cos().sum(), [x, w])
        return [y, gx, gw, gx2, gw2, gx3, gw3]

    for a, b in zip(run(ops), run(reference)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    op = ops.conv_transpose2d if transpose else ops.conv2d
    assert torch.autograd.gradgradcheck(lambda a, b: op(a, b, stride=s, padding=p, groups=g), (x, w))


def test_regrad_r1_and_path_length_equal_torch():
    """The two second-order regularizers through whole networks: same values and parameter gradients."""
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, img_resolution=16, img_channels=1, mapping_layers=2,
                  channel_base=64, channel_max=8).double()
    D = Discriminator(img_resolution=16, img_channels=1, channel_base=64, channel_max=8, mbstd_group_size=2).double()
    reals = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    ws = G.mapping(torch.randn(2, 8, dtype=torch.float64))

    def grads(use_reference):
        with reference.use("conv") if use_reference else contextlib.nullcontext():
            x = reals.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(D(x).sum(), [x], create_graph=True)
            r1 = g.square().sum()
            w = ws.detach().requires_grad_(True)
            img = G.synthesis(w, noise_mode="const")
            (gw,) = torch.autograd.grad((img * torch.ones_like(img)).sum(), [w], create_graph=True)
            pl = gw.square().sum()
            params = list(D.parameters()) + list(G.synthesis.parameters())
            return [r1, pl] + list(torch.autograd.grad(r1 + pl, params, allow_unused=True))

    for a, b in zip(grads(False), grads(True)):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Conditioning (StyleGAN2-ADA c_dim > 0)

def conditional_extra(c_dim: int, w_dim: int, c4: int, layers: int):
    """Parameters a label adds, counted from the official architecture: G gains embed (c_dim -> w_dim, with
    bias) and a first mapping layer w_dim wider; D gains a label mapping (embed c_dim -> cmap, then `layers`
    cmap -> cmap layers) and an epilogue output of cmap values instead of 1 (cmap = c4, channels at 4x4)."""
    g = c_dim * w_dim + w_dim + w_dim * w_dim
    d = (c_dim * c4 + c4) + layers * (c4 * c4 + c4) + (c4 * c4 + c4) - (c4 + 1)
    return g, d


@pytest.mark.parametrize("res,c_dim,layers,base,cmax,w_dim", [
    (256, 1, 8, 16384, 512, 512),                # official StyleGAN2-ADA: G 25,025,620 / D 26,365,376
    (64, 3, 2, 2048, 64, 512), (32, 10, 4, 1024, 32, 64), (16, 2, 1, 256, 16, 32),
])
def test_conditional_parameter_counts(res, c_dim, layers, base, cmax, w_dim):
    kw = dict(img_resolution=res, channel_base=base, channel_max=cmax)
    G0 = Generator(w_dim=w_dim, mapping_layers=layers, **kw)
    D0 = Discriminator(**kw)
    G = Generator(w_dim=w_dim, mapping_layers=layers, c_dim=c_dim, **kw)
    D = Discriminator(c_dim=c_dim, mapping_layers=layers, **kw)
    g, d = conditional_extra(c_dim, w_dim, min(base // 4, cmax), layers)
    assert count_params(G) - count_params(G0) == g and count_params(D) - count_params(D0) == d
    if res == 256:
        assert (count_params(G), count_params(D)) == (25_025_620, 26_365_376)
        assert (count_params(G0), count_params(D0)) == (24_762_452, 24_000_961)   # unconditional unchanged


def test_the_label_changes_the_output_and_is_checked():
    G = Generator(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=16, mapping_layers=2, c_dim=3)
    D = Discriminator(img_resolution=16, channel_base=128, channel_max=16, mapping_layers=2, c_dim=3)
    z = torch.randn(4, 16)
    a, b = torch.eye(3)[[0, 0, 0, 0]], torch.eye(3)[[2, 2, 2, 2]]
    img_a, img_b = G(z, a, noise_mode="const"), G(z, b, noise_mode="const")
    assert (img_a - img_b).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    assert torch.equal(img_a, G(z, a, noise_mode="const"))
    assert not torch.allclose(D(img_a, a), D(img_a, b))
    assert G.mapping(z, a).shape == (4, G.num_ws, 16) and "w_avg" not in dict(D.mapping.named_buffers())
    with pytest.raises(ValueError, match=r"c must have shape \[N, 3\]"):
        G(z)
    with pytest.raises(ValueError, match=r"c must have shape \[4, 3\]"):
        D(img_a, torch.eye(2))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_D(16)(img_a, a)
