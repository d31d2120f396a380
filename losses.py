"""The mathematics of StyleGAN2 training as pure functions: the logistic losses, the R1 and path-length
penalties, the lazy-regularization Adam correction, the generator EMA and the ADA adjustment of p; for masked
runs, the misregistered real pairs of the matching-aware D term (--mask_mismatch).

Each is a formula from the papers (StyleGAN2 sec. 3, appendix B; StyleGAN2-ADA sec. 2-3) that can be tested
alone; trainer.py calls them. Does not own when they are applied or the optimizers (trainer.py).
"""

import math

import torch
import torch.nn.functional as F


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(D(G(z))) = softplus(-D(G(z))), per sample."""
    return F.softplus(-fake_logits)


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(D(G(z))) + softplus(-D(x)), per sample."""
    return F.softplus(fake_logits) + F.softplus(-real_logits)


# The 8 directions a misregistered mask moves in (rows, columns), each by 1 or 2 pixels.
SHIFTS = torch.tensor([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])


def misregistered(pairs: torch.Tensor, img_channels: int, generator: torch.Generator = None) -> torch.Tensor:
    """Real pairs [N, C + M, R, R] with each mask moved 1 or 2 pixels in one of 8 directions (wrapping round;
    the border is background) and the image left where it is: pairs whose mask does not fit its image, which
    a matching-aware D scores as fake (Reed et al. 2016, GAN-CLS, there with mismatched captions)."""
    n = pairs.shape[0]
    step = torch.randint(1, 3, (n, 1), generator=generator)
    shifts = (SHIFTS[torch.randint(len(SHIFTS), (n,), generator=generator)] * step).tolist()
    masks = [torch.roll(m, tuple(s), dims=(1, 2)) for m, s in zip(pairs[:, img_channels:], shifts)]
    return torch.cat([pairs[:, :img_channels], torch.stack(masks)], dim=1)


def r1_penalty(real_img: torch.Tensor, real_logits: torch.Tensor, channels: int = None) -> torch.Tensor:
    """||grad_x D(x)||^2 per sample (Mescheder et al. 2018), over x's first `channels` channels (None = all);
    real_img must require grad. [N]"""
    (grads,) = torch.autograd.grad(real_logits.sum(), real_img, create_graph=True)
    return grads[:, :channels].float().square().sum(dim=[1, 2, 3])


def path_lengths(img: torch.Tensor, ws: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
    """|J_w^T y| for y ~ N(0, I) / sqrt(H W): sqrt(mean over ws of sum(g^2)), per sample (StyleGAN2 eq. 4). [N]
    y is drawn from `generator` (on img's device), or from the global RNG when it is None."""
    noise = torch.randn(img.shape, dtype=img.dtype, device=img.device, generator=generator)
    noise = noise / math.sqrt(img.shape[2] * img.shape[3])                 # [N, C, H, W]
    (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    return grads.float().square().sum(dim=2).mean(dim=1).sqrt()


def path_length_penalty(lengths: torch.Tensor, pl_mean: torch.Tensor, decay: float, batch_mean=None):
    """((L - a)^2 per sample, new a) with a = lerp(pl_mean, mean(L), decay). The new a keeps its
    gradient through mean(L), as in the official implementation. batch_mean replaces mean(L) when the
    mean is taken over more than this batch (all ranks)."""
    a = pl_mean.lerp(lengths.mean() if batch_mean is None else batch_mean, decay)
    return (lengths - a).square(), a


def lazy_adam_hparams(lr: float, betas, interval: int):
    """Lazy regularization every k steps: lr * c and betas ** c with c = k / (k + 1) (StyleGAN2 sec. 3.1)."""
    c = interval / (interval + 1)
    return lr * c, tuple(b ** c for b in betas)


def ema_beta(batch: int, ema_kimg: float, ema_rampup: float, cur_nimg: int) -> float:
    """Per-step EMA decay: 0.5 ** (batch / ema_nimg), ema_nimg optionally ramped to cur_nimg * ramp."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup > 0:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    """Parameters: p_ema = lerp(p, p_ema, beta). Buffers (w_avg, const noise) are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def ada_adjust(p: float, sign_mean: float, target: float, batch: int, interval: int, ada_kimg: float) -> float:
    """ADA: p += sign(E[sign(D(real))] - target) * (batch * interval) / (ada_kimg * 1000), clamped at 0."""
    step = math.copysign(1, sign_mean - target) * batch * interval / (ada_kimg * 1000)
    return max(p + step, 0.0)
