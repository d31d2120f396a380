"""The in-training segmenter of --mask_consistency W: a small U-Net that learns tissue segmentation from the
real image + mask pairs while the GAN trains, and the term that asks each generated pair to agree under it.

Why: D judges a pair as a whole, and through the blur it is shown (--mask_blur) it tells little about
whether a mask's edges sit on its image's edges; the generated pairs agree with each other less than real
ones do (docs/results.md). Here a segmenter S, trained on real pairs only (cross-entropy + soft Dice, as
segment.py trains), reads G's image, and G is given W times
    CE(S(image), labels of G's mask)          (the image should show the tissue its mask names)
  + mean((mask - encoded argmax S(image))^2)  (the mask should name the tissue S sees in the image),
with S's weights held (--consistency_rim=false: the image's term leaves out the mask's CSF pixels next to
background, see rim()); the same idea as the semantic-consistency losses of paired image + label GANs
(e.g. the semantic-consistency loss of CyCADA, Hoffman et al. 2018), here with a segmenter from the real
pairs of this run. The term starts after S has taken WARMUP_STEPS steps, so G is not steered by an
untrained S. S is scored with batch statistics of real batches and, for G's term, with its running ones.
The agreement score of --agreement_segmenter stays an independent check: a separate segmenter trained apart
(segment.py train), not this S.

Does not own when these run (trainer.py) or the segmentation network itself (segment.UNet).
"""

import torch
import torch.nn.functional as F

import config as config_lib
import dataset
import segment

WIDTH = 16              # channels of S's first level (segment.UNet base), doubled at each of DEPTH levels down
DEPTH = 3
LR = 1e-3               # Adam, as segment.py trains its segmenters
BETAS = (0.9, 0.999)
WARMUP_STEPS = 200      # S's steps before G's term starts (S reaches most of its Dice by then on the demo data)
RIM_STEPS = 2           # --consistency_rim=false: how far into CSF from background the rim reaches (pixels)
SEED_OFFSET = 7919      # S's initial weights come from --seed + this, apart from G's and D's
MIN_BRAIN_SHARE = 0.01  # --consistency_brain: a sample's brain counts as at least this share of the image, so an
                        # empty slice's weight stays finite (the lowest real demo level holds about 7 %)


def rim(labels: torch.Tensor, steps: int = RIM_STEPS) -> torch.Tensor:
    """Labels [B, R, R] (0 background, 1 CSF, ...) -> bool [B, R, R]: the CSF pixels reached from background
    in at most `steps` moves to one of the 8 neighbours, each through CSF (outside the image counts as
    background). Where a soft level mask steps from background (-1) to grey matter (1/3), the pixels between
    snap to CSF (-1/3), a band one or two pixels wide under a blur of sigma 1: these are the pixels such a
    ring is made of, along with real CSF at the brain's surface; CSF inside the brain (ventricles) is not."""
    csf = (labels == 1).float()[:, None]
    reached = (labels == 0).float()[:, None]
    for _ in range(steps):
        grown = F.max_pool2d(F.pad(reached, (1, 1, 1, 1), value=1.0), kernel_size=3, stride=1)
        reached = torch.maximum(reached, grown * csf)
    return (reached[:, 0] > 0) & (labels == 1)


def brain_weights(labels: torch.Tensor, seen_labels: torch.Tensor) -> torch.Tensor:
    """--consistency_brain: the weight of each sample's term [B] from its mask's labels and S's reading [B, R, R]:
    the batch's mean brain share over the sample's own, where the brain is every pixel either calls tissue (at
    least MIN_BRAIN_SHARE of the image). Averaged over the whole image, a term is mostly made of brain pixels,
    so a small, low slice scores a smaller term than a large one for the same agreement per pixel (at 60 kimg
    the default's term rose with its samples' brain share, correlation 0.91). Weighted so, the term is a mean
    over the brain pixels at the image-wide scale and no slice size is cheaper; no gradient flows through the
    weight. Measured on the demo data it did not bring the missed mid-brain levels back (docs/results.md,
    row (u)), so it is off unless given."""
    brain = ((labels > 0) | (seen_labels > 0)).float().mean(dim=[1, 2]).clamp(min=MIN_BRAIN_SHARE)
    return (brain.mean() / brain).detach()


class Consistency:
    """S, its optimizer and its step count: the state --mask_consistency adds to a checkpoint."""

    def __init__(self, cfg: config_lib.TrainConfig, device: torch.device, memory_format=torch.contiguous_format):
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):           # built on the CPU from --seed; the caller's RNG as it was
            torch.random.default_generator.manual_seed(cfg.seed + SEED_OFFSET)
            net = segment.UNet(in_channels=cfg.img_channels, classes=config_lib.MASK_CLASSES, base=WIDTH, depth=DEPTH)
        self.net = net.to(device, memory_format=memory_format)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=LR, betas=BETAS, eps=1e-8, fused=True)
        self.steps = 0

    @property
    def active(self) -> bool:
        """Whether G's term is on: S has taken its warm-up steps."""
        return self.steps >= WARMUP_STEPS

    def segmenter_loss(self, reals: torch.Tensor) -> torch.Tensor:
        """S's loss on real pairs [B, C + M, R, R] (the training encoding): cross-entropy + soft Dice of its
        segmentation of the images against the masks' labels."""
        n = self.cfg.img_channels
        labels = dataset.mask_labels(reals[:, n:], config_lib.MASK_CLASSES).long()
        self.net.train().requires_grad_(True)
        logits = self.net(reals[:, :n].detach()).float()
        return F.cross_entropy(logits, labels) + segment.soft_dice_loss(logits, labels)

    def generator_term(self, fakes: torch.Tensor) -> torch.Tensor:
        """The agreement term on generated pairs [B, C + M, R, R], per sample [B], with S's weights held: the
        image's cross-entropy under S against the mask's labels, plus the mask's squared distance from S's
        segmentation in the training encoding, times --consistency_mask_weight (--consistency_image=false: the
        mask's term alone; --consistency_rim=false: the image's term averaged over the pixels off the mask's
        CSF rim; --consistency_brain: each sample's term over its brain's share of the image, see
        brain_weights)."""
        n, k = self.cfg.img_channels, config_lib.MASK_CLASSES
        image, mask = fakes[:, :n], fakes[:, n:]
        self.net.eval().requires_grad_(False)
        logits = self.net(image).float()                                          # [B, K, R, R]
        seen_labels = logits.detach().argmax(dim=1)
        seen = dataset.mask_channels(seen_labels, k, self.cfg.mask_encoding).to(mask.dtype)
        term = (mask - seen).square().mean(dim=[1, 2, 3]) * self.cfg.consistency_mask_weight
        labels = dataset.mask_labels(mask, k).long()
        if self.cfg.consistency_image:
            image_term = F.cross_entropy(logits, labels, reduction="none")            # [B, R, R]
            if self.cfg.consistency_rim:
                term = term + image_term.mean(dim=[1, 2])
            else:                                                                 # --consistency_rim=false
                keep = ~rim(labels)
                term = term + (image_term * keep).sum(dim=[1, 2]) / keep.sum(dim=[1, 2]).clamp(min=1)
        if self.cfg.consistency_brain:
            term = term * brain_weights(labels, seen_labels)
        return term

    def state_dict(self) -> dict:
        return {"S": self.net.state_dict(), "opt_S": self.opt.state_dict(), "S_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["S"])
        self.opt.load_state_dict(state["opt_S"])
        self.steps = state["S_steps"]
