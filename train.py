"""StyleGAN2 training: the GAN loop with lazy R1 and path-length regularization, G EMA, bf16 mixed
precision, exact resume from plain-tensor checkpoints, and multi-GPU through torchrun.

Owns the losses and penalties, the optimizers, the run folder (config.json, log.jsonl, image grids,
losses.png, checkpoints) and the signals. Does not own the networks (modules.py), the data (dataset.py),
the augmentation pipeline (augment.py) or the hyperparameters' definitions (config.py).

    python train.py                                    # the demo preset on the built-in demo data
    python train.py --preset oasis256 --data /path/to/oasis
    python train.py --resume runs/00003-oasis256       # continue exactly where it stopped
    torchrun --nproc_per_node=2 train.py --preset oasis256 --data /path/to/oasis
"""

import copy
import json
import math
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import augment
import config as config_lib
import dataset
from modules import Discriminator, Generator, count_params

CHECKPOINT_FORMAT = "stylegan2-mri-checkpoint"
CHECKPOINT_VERSION = 1
HEALTH_CHECK_INTERVAL = 4      # iterations between host reads of the non-finite counters (ADA reads at 4 too)


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. non-finite steps in a row); the message says why and what to change."""


# ----------------------------------------------------------------------------------------------
# Losses and penalties (StyleGAN2-ADA sec. 2, StyleGAN2 sec. 3.2 and appendix B)

def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(D(G(z))) = softplus(-D(G(z))), per sample."""
    return F.softplus(-fake_logits)


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(D(G(z))) + softplus(-D(x)), per sample."""
    return F.softplus(fake_logits) + F.softplus(-real_logits)


def r1_penalty(real_img: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """||grad_x D(x)||^2 per sample (Mescheder et al. 2018); real_img must require grad. [N]"""
    (grads,) = torch.autograd.grad(real_logits.sum(), real_img, create_graph=True)
    return grads.float().square().sum(dim=[1, 2, 3])


def path_lengths(img: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    """|J_w^T y| for y ~ N(0, I) / sqrt(H W): sqrt(mean over ws of sum(g^2)), per sample (StyleGAN2 eq. 4). [N]"""
    noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    return grads.float().square().sum(dim=2).mean(dim=1).sqrt()


def path_length_penalty(lengths: torch.Tensor, pl_mean: torch.Tensor, decay: float):
    """((L - a)^2 per sample, new a) with a = lerp(pl_mean, mean(L), decay). The new a keeps its
    gradient through mean(L), as in the official implementation."""
    a = pl_mean.lerp(lengths.mean(), decay)
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


# ----------------------------------------------------------------------------------------------
# Checkpoints: plain tensors, numbers and strings; atomic writes

def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file next to path, then rename: a crash leaves the old file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by this project (weights_only: no code runs). One clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise TrainingStopped(f"--resume {path}: no such checkpoint; give a checkpoint.pt or its run folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TrainingStopped(f"{path}: holds pickled Python objects, which are refused (loading them could run "
                              f"code); only this project's plain-tensor checkpoints can be resumed") from None
    except (RuntimeError, EOFError, OSError) as e:
        reason = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise TrainingStopped(f"{path}: unreadable or truncated checkpoint ({reason}); try the previous snapshot") \
            from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingStopped(f"{path}: not a checkpoint of this project (no '{CHECKPOINT_FORMAT}' marker)")
    return state


def build_networks(cfg: config_lib.TrainConfig, conv_clamp=None):
    """(G, D) for a config."""
    G = Generator(z_dim=cfg.z_dim, w_dim=cfg.w_dim, img_resolution=cfg.resolution, img_channels=cfg.img_channels,
                  mapping_layers=cfg.mapping_layers, channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                  conv_clamp=conv_clamp)
    D = Discriminator(img_resolution=cfg.resolution, img_channels=cfg.img_channels, channel_base=cfg.channel_base,
                      channel_max=cfg.channel_max, mbstd_group_size=cfg.mbstd_group, conv_clamp=conv_clamp)
    return G, D


# ----------------------------------------------------------------------------------------------
# Distributed helpers (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)

def dist_env():
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def all_reduce_mean_(tensors, world_size: int) -> None:
    """Average tensors over ranks in place (one flat all-reduce)."""
    if world_size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def gather_rng_states(device: torch.device, world_size: int) -> dict:
    """Every rank's torch RNG states (CPU and, if used, CUDA), as lists indexed by rank."""
    mine = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    if world_size == 1:
        return {k: [v] for k, v in mine.items()}
    gathered = [None] * world_size
    dist.all_gather_object(gathered, {k: v.numpy().tobytes() for k, v in mine.items()})
    return {k: [torch.frombuffer(bytearray(g[k]), dtype=torch.uint8) for g in gathered] for k in mine}


def check_ranks_in_sync(modules: dict, world_size: int) -> bool:
    """True when every rank holds the same parameters and buffers as rank 0 (bitwise)."""
    if world_size == 1:
        return True
    device = next(iter(modules.values())).mapping.w_avg.device if "G" in modules else torch.device("cpu")
    same = torch.ones([], dtype=torch.float32, device=device)
    for module in modules.values():
        for t in list(module.parameters()) + list(module.buffers()):
            ref = t.detach().clone()
            dist.broadcast(ref, src=0)
            same *= float(torch.equal(ref, t.detach()))
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())


# ----------------------------------------------------------------------------------------------
# The training state and one iteration

class Trainer:
    """G, D, G_ema, optimizers, counters and running statistics: everything a checkpoint holds."""

    def __init__(self, cfg: config_lib.TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1,
                 data=None, log=print):
        self.cfg, self.device, self.rank, self.world_size, self.log = cfg, device, rank, world_size, log
        self.batch_gpu = cfg.batch // world_size
        mp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        self.amp_dtype = torch.bfloat16 if mp == "bf16" else None
        torch.manual_seed(cfg.seed)                            # same initial networks on every rank
        self.G, self.D = build_networks(cfg, conv_clamp=cfg.conv_clamp if self.amp_dtype else None)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.G = self.G.to(device, memory_format=self.memory_format).train()
        self.D = self.D.to(device, memory_format=self.memory_format).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        betas = cfg.adam_betas()
        g_lr, g_betas = lazy_adam_hparams(cfg.lr, betas, cfg.pl_interval) if cfg.pl_weight > 0 else (cfg.lr, betas)
        d_lr, d_betas = lazy_adam_hparams(cfg.lr, betas, cfg.r1_interval) if self.r1_gamma > 0 else (cfg.lr, betas)
        # fused Adam can skip a step on a device-side flag (found_inf): no host sync per step.
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=g_lr, betas=g_betas, eps=1e-8, fused=True)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=d_betas, eps=1e-8, fused=True)
        self.pl_mean = torch.zeros([], device=device)
        self.augment_pipe = make_augment_pipe(cfg, device)
        self.ada_p = cfg.p
        self.cur_nimg, self.batch_idx, self.tick = 0, 0, 0
        # Non-finite bookkeeping stays on the device; check_nonfinite() reads it every few iterations.
        self.nonfinite_total = torch.zeros([], dtype=torch.long, device=device)
        self.nonfinite_run = {}                                       # phase -> non-finite steps in a row
        self.nonfinite_stop = {}                                      # phase -> step that hit max_nonfinite, or -1
        self.data = data
        self.sampler = dataset.InfiniteSampler(len(data), seed=cfg.seed, rank=rank, world_size=world_size) \
            if data is not None else None
        torch.manual_seed(cfg.seed * world_size + rank)       # per-rank noise, latents and mixing
        self._ada_sum = torch.zeros([], device=device)
        self._ada_count = 0
        self.stats = {}

    @property
    def r1_gamma(self) -> float:
        return self.cfg.resolved_r1_gamma()

    # -- one iteration: D step, lazy R1, G step, lazy path length, EMA, ADA ---------------------

    def step(self) -> None:
        reals = self.data.batch(self.sampler.next(self.batch_gpu), device=self.device)  # [B, C, R, R] in [-1, 1]
        reals = reals.contiguous(memory_format=self.memory_format)
        self.d_step(reals)
        if self.r1_gamma > 0 and self.batch_idx % self.cfg.r1_interval == 0:
            self.r1_step(reals)
        self.g_step()
        if self.cfg.pl_weight > 0 and self.batch_idx % self.cfg.pl_interval == 0:
            self.pl_step()
        update_ema(self.G_ema, self.G, ema_beta(self.cfg.batch, self.cfg.resolved_ema_kimg(), self.cfg.ema_rampup,
                                                self.cur_nimg))
        # w_avg moved with each rank's own batches; its update is linear in the batch means, so the
        # rank average equals tracking the global batch.
        all_reduce_mean_([self.G.mapping.w_avg], self.world_size)
        self.cur_nimg += self.cfg.batch
        self.batch_idx += 1
        if self.cfg.aug == "ada" and self.batch_idx % self.cfg.ada_interval == 0:
            self.ada_update()
        if self.batch_idx % HEALTH_CHECK_INTERVAL == 0:
            self.check_nonfinite()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def run_G(self, z: torch.Tensor):
        """Images and ws from z, with style mixing: a second z takes over from a random crossover."""
        ws = self.G.mapping(z, update_w_avg=True)                     # [N, num_ws, w_dim]
        if self.cfg.style_mixing > 0 and torch.rand([]).item() < self.cfg.style_mixing:
            cutoff = int(torch.randint(1, ws.shape[1], []).item())
            ws[:, cutoff:] = self.G.mapping(torch.randn_like(z))[:, cutoff:]
        with self.autocast():
            img = self.G.synthesis(ws, noise_mode="random")
        return img.float(), ws

    def run_D(self, img: torch.Tensor) -> torch.Tensor:
        """D's logits for images, augmented first (every image D sees, the R1 pass included)."""
        if self.augment_pipe is not None and self.ada_p > 0:
            self.augment_pipe.p = self.ada_p
            img = self.augment_pipe(img)
        with self.autocast():
            return self.D(img).float()                                # [N, 1]

    def d_step(self, reals: torch.Tensor) -> None:
        with torch.no_grad():
            fakes, _ = self.run_G(torch.randn(self.batch_gpu, self.cfg.z_dim, device=self.device))
        real_logits = self.run_D(reals)
        loss = d_logistic_loss(real_logits, self.run_D(fakes)).mean()
        self.record("loss_D", loss)
        self.record("D_real", real_logits.mean())
        if self.cfg.aug == "ada":
            self._ada_sum += real_logits.detach().sign().sum()
            self._ada_count += real_logits.shape[0]
        self.optimize(self.D, self.opt_D, loss, "D")

    def r1_step(self, reals: torch.Tensor) -> None:
        reals = reals.detach().requires_grad_(True)
        penalty = r1_penalty(reals, self.run_D(reals))
        self.record("r1_penalty", penalty.mean())
        self.optimize(self.D, self.opt_D, penalty.mean() * (self.r1_gamma / 2) * self.cfg.r1_interval, "R1")

    def g_step(self) -> None:
        self.D.requires_grad_(False)
        fakes, _ = self.run_G(torch.randn(self.batch_gpu, self.cfg.z_dim, device=self.device))
        loss = g_nonsaturating_loss(self.run_D(fakes)).mean()
        self.D.requires_grad_(True)
        self.record("loss_G", loss)
        self.optimize(self.G, self.opt_G, loss, "G")

    def pl_step(self) -> None:
        n = self.batch_gpu // self.cfg.pl_batch_shrink
        fakes, ws = self.run_G(torch.randn(n, self.cfg.z_dim, device=self.device))
        lengths = path_lengths(fakes, ws)
        mean = lengths.mean()
        if self.world_size > 1:                                       # global mean value, local gradient
            total = mean.detach().clone()
            dist.all_reduce(total)
            mean = mean + (total / self.world_size - mean.detach())
        a = self.pl_mean.lerp(mean, self.cfg.pl_decay)
        penalty = (lengths - a).square()
        self.record("pl_penalty", penalty.mean())
        loss = penalty.mean() * self.cfg.pl_weight * self.cfg.pl_interval
        taken = self.optimize(self.G, self.opt_G, loss, "PL")
        self.pl_mean.copy_(torch.where(taken, a.detach(), self.pl_mean))

    def optimize(self, module, opt, loss: torch.Tensor, phase: str) -> torch.Tensor:
        """Backward, average gradients over ranks, and step, unless the loss or a gradient is not
        finite: then the step is skipped and counted. Returns whether the step was taken, as a device
        flag: nothing here waits for the GPU."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        all_reduce_mean_(grads, self.world_size)
        finite = torch.isfinite(loss.detach()) & torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()
        if self.world_size > 1:
            flag = finite.float()
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag > 0
        opt.found_inf = (~finite).float()                            # fused Adam leaves everything as it was
        opt.step()
        bad = (~finite).long()
        run = (self.nonfinite_run.get(phase, 0) + 1) * bad
        stop = self.nonfinite_stop.get(phase, torch.full([], -1, dtype=torch.long, device=self.device))
        self.nonfinite_stop[phase] = torch.where((stop < 0) & (run >= self.cfg.max_nonfinite),
                                                 torch.full_like(stop, self.batch_idx), stop)
        self.nonfinite_run[phase] = run
        self.nonfinite_total += bad
        return finite

    def check_nonfinite(self) -> None:
        """Stop the run if some phase had max_nonfinite non-finite steps in a row (reads the device)."""
        for phase, step in self.nonfinite_stop.items():
            step = int(step)
            if step >= 0:
                raise TrainingStopped(
                    f"{self.cfg.max_nonfinite} non-finite steps in a row (last in the {phase} step at "
                    f"kimg {step * self.cfg.batch / 1000:.1f}, step {step}); try a lower --lr, a larger "
                    f"--r1_gamma or --mixed_precision=fp32; the last good checkpoint.pt is kept")

    def ada_update(self) -> None:
        stat = torch.stack([self._ada_sum, torch.tensor(float(self._ada_count), device=self.device)])
        if self.world_size > 1:
            dist.all_reduce(stat)
        self.ada_p = ada_adjust(self.ada_p, (stat[0] / stat[1]).item(), self.cfg.ada_target, self.cfg.batch,
                                self.cfg.ada_interval, self.cfg.ada_kimg)
        self._ada_sum.zero_()
        self._ada_count = 0

    def record(self, name: str, value: torch.Tensor) -> None:
        """Accumulate a statistic on the device (read once per tick, no sync per step)."""
        total, count = self.stats.get(name, (torch.zeros([], device=self.device), 0))
        self.stats[name] = (total + value.detach().float(), count + 1)

    def pop_stats(self) -> dict:
        out = {k: (t / c).item() for k, (t, c) in self.stats.items()}
        self.stats = {}
        return out

    # -- checkpoint state ---------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: plain tensors, numbers and strings only."""
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": json.loads(self.cfg.to_json()),
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "pl_mean": self.pl_mean.detach().cpu(), "ada_p": float(self.ada_p),
            "ada_sum": self._ada_sum.detach().cpu(), "ada_count": self._ada_count,
            "cur_nimg": self.cur_nimg, "batch_idx": self.batch_idx, "tick": self.tick,
            "nonfinite_total": int(self.nonfinite_total),
            "nonfinite_run": {k: int(v) for k, v in self.nonfinite_run.items()},
            "sampler": self.sampler.state_dict(), "world_size": self.world_size,
            "rng": gather_rng_states(self.device, self.world_size),
        }

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.pl_mean.copy_(state["pl_mean"])
        self.ada_p = state["ada_p"]
        self._ada_sum.copy_(state["ada_sum"])
        self._ada_count = state["ada_count"]
        self.cur_nimg, self.batch_idx, self.tick = state["cur_nimg"], state["batch_idx"], state["tick"]
        self.nonfinite_total.fill_(state["nonfinite_total"])
        self.nonfinite_run = {k: torch.tensor(v, device=self.device) for k, v in state["nonfinite_run"].items()}
        self.sampler.load_state_dict(state["sampler"])
        rng = state["rng"]
        if state["world_size"] == self.world_size:
            torch.set_rng_state(rng["cpu"][self.rank])
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"][self.rank], self.device)
        else:
            self.log(f"note: the checkpoint was written with {state['world_size']} process(es), this run has "
                     f"{self.world_size}; training continues but the random streams are re-seeded")
            torch.manual_seed(self.cfg.seed * self.world_size + self.rank + state["batch_idx"])


def make_augment_pipe(cfg: config_lib.TrainConfig, device: torch.device):
    """The augmentation pipe for --aug=ada|fixed (augment.py), or None for noaug."""
    if cfg.aug == "noaug":
        return None
    return augment.AugmentPipe(img_channels=cfg.img_channels, pipeline=cfg.aug_pipe, p=cfg.p).to(device)


# ----------------------------------------------------------------------------------------------
# Run folder, images, plots

def new_run_dir(outdir: Path, preset: str) -> Path:
    """runs/NNNNN-<preset>: one more than the highest number there; never reuses a folder."""
    outdir.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[:5]) for p in outdir.iterdir() if p.name[:5].isdigit()]
    n = max(numbers, default=-1) + 1
    while True:
        path = outdir / f"{n:05d}-{preset}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def save_grid(images: torch.Tensor, path: Path, cols: int) -> None:
    """[N, C, R, R] in [-1, 1] -> one PNG grid (uint8)."""
    from PIL import Image
    x = dataset.to_uint8(images).cpu()
    n, c, h, w = x.shape
    rows = math.ceil(n / cols)
    grid = torch.zeros(c, rows * h, cols * w, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = x[i]
    array = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)


def kimg_tag(nimg: int) -> str:
    """File-name tag of a training position: 000040 for 40 kimg, 0000.160 for 160 images."""
    return f"{nimg // 1000:06d}" if nimg % 1000 == 0 else f"{nimg / 1000:08.3f}"


def grid_latents(cfg: config_lib.TrainConfig, device) -> torch.Tensor:
    """Fixed latents for fakes*.png, from their own generator (the training RNG is not touched)."""
    cols, rows = cfg.grid_size()
    gen = torch.Generator().manual_seed(cfg.seed + 123)
    return torch.randn(cols * rows, cfg.z_dim, generator=gen).to(device)


@torch.no_grad()
def save_fakes(trainer: Trainer, z: torch.Tensor, path: Path) -> None:
    images = torch.cat([trainer.G_ema(zb, noise_mode="const") for zb in z.split(trainer.batch_gpu)])
    save_grid(images, path, trainer.cfg.grid_size()[0])


def read_log(path: Path) -> list:
    """Tick records of log.jsonl; after a resume the replayed ticks replace the earlier ones."""
    by_tick = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue                                            # a line cut off by a crash
            if "tick" in record and "event" not in record:
                by_tick[record["tick"]] = record
    return [by_tick[t] for t in sorted(by_tick)]


def plot_losses(log_path: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = read_log(log_path)
    if not records:
        return
    kimg = [r["kimg"] for r in records]
    panels = [("losses", ["loss_G", "loss_D"]), ("D output on reals", ["D_real"]),
              ("penalties", ["r1_penalty", "pl_penalty"]), ("augmentation p", ["ada_p"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            values = [r.get(key, float("nan")) for r in records]
            ax.plot(kimg, values, label=key)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("kimg")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20           # kB on Linux


# ----------------------------------------------------------------------------------------------
# main

def choose_device(cfg: config_lib.TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise config_lib.ConfigError("--device=cuda but no CUDA GPU is visible; use --device=cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


class StopFlag:
    """SIGINT / SIGTERM ask the loop to save a checkpoint and stop after the current step."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        if self.signal is not None:                                    # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum


def resolve_resume(resume: str, given: dict):
    """(the checkpoint's config with the options given now on top, the state, the run folder)."""
    state = load_checkpoint(resume)
    if "opt_G" not in state:
        raise TrainingStopped(f"--resume {resume}: a snapshot keeps the networks but not the optimizer state, so "
                              f"it cannot continue exactly; resume from the run folder's checkpoint.pt")
    cfg = config_lib.resume_config(state["config"], dict(given, resume=resume))
    path = Path(resume)
    return cfg, state, path if path.is_dir() else path.parent


def train(cfg: config_lib.TrainConfig, given: dict = None) -> Path:
    """Train with cfg; when cfg.resume is set, `given` (the options typed on the command line) are
    applied on top of the checkpoint's config."""
    rank, world_size, local_rank = dist_env()
    device = choose_device(cfg, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    is_main = rank == 0
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if is_main else (lambda msg: None)

    state = run_dir = None
    if cfg.resume:
        cfg, state, run_dir = resolve_resume(cfg.resume, given if given is not None else {})
    config_lib.validate(cfg, world_size)
    if cfg.dry_run:
        G, D = build_networks(cfg)
        if is_main:
            print(cfg.to_json())
            print(f"G {count_params(G):,} parameters, D {count_params(D):,} parameters, num_ws {G.num_ws}, "
                  f"{world_size} process(es), {cfg.batch // world_size} images per process, device {device}")
        return None

    # Data: rank 0 decodes (or builds the demo) first, the other ranks then read its cache.
    data_path = cfg.data
    if not data_path:
        data_path = str(dataset.ensure_demo(log=log)) if is_main else str(dataset.DEFAULT_DATA)
    if world_size > 1 and not is_main:
        dist.barrier()
    data = dataset.ImageDataset(data_path, split=cfg.split, resolution=cfg.resolution, img_channels=cfg.img_channels,
                                fit=cfg.fit, mirror=cfg.mirror, skip_bad=cfg.skip_bad,
                                cache_dir=cfg.cache_dir or None, log=log)
    if world_size > 1 and is_main:
        dist.barrier()

    trainer = Trainer(cfg, device, rank, world_size, data, log)
    if state is not None:
        trainer.load_state_dict(state)
        state = None
    if is_main and run_dir is None:
        run_dir = new_run_dir(Path(cfg.outdir), cfg.preset)
    if world_size > 1:                                               # every rank needs the folder name
        holder = [str(run_dir) if is_main else None]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    if is_main:
        (run_dir / "config.json").write_text(cfg.to_json())
        log(f"run folder {run_dir}: G {count_params(trainer.G):,} / D {count_params(trainer.D):,} parameters, "
            f"{len(data)} training images{' (with x-flips)' if cfg.mirror else ''}, device {device}, "
            f"{'bf16' if trainer.amp_dtype else 'fp32'}, {world_size} process(es)")
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"event": "resume" if cfg.resume else "start", "kimg": trainer.cur_nimg / 1000,
                                "tick": trainer.tick, "time": time.time()}) + "\n")
        if not (run_dir / "reals.png").exists():
            cols, rows = cfg.grid_size()
            idx = np.random.default_rng(cfg.seed).choice(data.num_images, size=min(cols * rows, data.num_images),
                                                         replace=False)
            save_grid(data.batch(idx), run_dir / "reals.png", cols)
    z_grid = grid_latents(cfg, device)
    if is_main and trainer.cur_nimg == 0:
        save_fakes(trainer, z_grid, run_dir / "fakes000000.png")
    run_loop(trainer, run_dir, z_grid, is_main, log)
    return run_dir


def run_loop(trainer: Trainer, run_dir: Path, z_grid: torch.Tensor, is_main: bool, log) -> None:
    from tqdm import tqdm
    cfg, device, world_size = trainer.cfg, trainer.device, trainer.world_size
    total_nimg = int(cfg.kimg * 1000)
    stop = StopFlag()
    tick_start_nimg, tick_start_time = trainer.cur_nimg, time.time()
    last_checkpoint = time.time()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=total_nimg, initial=min(trainer.cur_nimg, total_nimg), unit="kimg", unit_scale=0.001,
               disable=not is_main, file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}]")

    def checkpoint(snapshot: bool = False) -> None:
        """checkpoint.pt (everything), and for a snapshot also snapshot-<kimg>.pt (without optimizers)."""
        state = trainer.state_dict()                                 # collective: every rank takes part
        if is_main:
            save_checkpoint(run_dir / "checkpoint.pt", state)
            if snapshot:
                save_checkpoint(run_dir / f"snapshot-{kimg_tag(trainer.cur_nimg)}.pt",
                                {k: v for k, v in state.items() if not k.startswith("opt_")})

    while True:
        if trainer.cur_nimg < total_nimg:
            try:
                trainer.step()
            except TrainingStopped as e:
                bar.close()
                raise TrainingStopped(f"{e}: {run_dir / 'checkpoint.pt'}") from None
            bar.update(min(cfg.batch, total_nimg - bar.n))
        done = trainer.cur_nimg >= total_nimg
        interrupted = stop.signal is not None
        if world_size > 1:
            flag = torch.tensor(float(interrupted), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            interrupted = bool(flag.item())
        tick_end = trainer.cur_nimg >= tick_start_nimg + cfg.tick_kimg * 1000
        if not (done or tick_end or interrupted):
            continue
        if tick_end or done:
            try:
                trainer.check_nonfinite()                            # before anything is written
            except TrainingStopped as e:
                bar.close()
                raise TrainingStopped(f"{e}: {run_dir / 'checkpoint.pt'}") from None
            trainer.tick += 1 if trainer.cur_nimg > tick_start_nimg else 0
            stats = trainer.pop_stats()
            seconds = time.time() - tick_start_time
            images = trainer.cur_nimg - tick_start_nimg
            snapshot = done or (cfg.snap > 0 and trainer.tick % cfg.snap == 0)
            record = {"tick": trainer.tick, "kimg": trainer.cur_nimg / 1000, "seconds": round(seconds, 3),
                      "sec_per_kimg": round(seconds / max(images / 1000, 1e-9), 3),
                      "images_per_s": round(images / max(seconds, 1e-9), 2), **stats,
                      "pl_mean": trainer.pl_mean.item(), "ada_p": trainer.ada_p,
                      "nonfinite_skipped": int(trainer.nonfinite_total), "peak_mem_gb": round(peak_memory_gb(device), 3),
                      "time": time.time()}
            if snapshot:
                record["ranks_in_sync"] = check_ranks_in_sync({"G": trainer.G, "D": trainer.D}, world_size)
            if is_main and images > 0:
                with open(run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                status = "  ".join(f"{k} {record[k]:.4g}" for k in ("kimg", "sec_per_kimg", "loss_G", "loss_D")
                                   if k in record)
                tqdm.write(f"tick {trainer.tick:<5} {status}  p {trainer.ada_p:.3f}", file=sys.stderr)
                plot_losses(run_dir / "log.jsonl", run_dir / "losses.png")
            if snapshot and is_main and images > 0:
                save_fakes(trainer, z_grid, run_dir / f"fakes{kimg_tag(trainer.cur_nimg)}.png")
            if snapshot or time.time() - last_checkpoint >= cfg.checkpoint_minutes * 60:
                checkpoint(snapshot=snapshot and images > 0)
                last_checkpoint = time.time()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            tick_start_nimg, tick_start_time = trainer.cur_nimg, time.time()
        if interrupted and not done:
            checkpoint()
            bar.close()
            name = "SIGINT" if stop.signal == signal.SIGINT else "SIGTERM"
            log(f"{name}: checkpoint saved at kimg {trainer.cur_nimg / 1000:.1f}; continue with "
                f"python train.py --resume {run_dir}")
            raise SystemExit(130 if stop.signal == signal.SIGINT else 143)
        if done:
            bar.close()
            log(f"done: {trainer.cur_nimg / 1000:.1f} kimg; results in {run_dir}")
            return


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = config_lib.main(argv)
    try:
        train(cfg, config_lib.parse_given(argv))
    except (TrainingStopped, config_lib.ConfigError, dataset.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
