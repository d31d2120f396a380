"""StyleGAN2 training: the GAN loop with lazy R1 and path-length regularization, G EMA, bf16 mixed
precision, exact resume from plain-tensor checkpoints, and multi-GPU through torchrun.

Owns the optimizers, the training state a checkpoint holds, one iteration (D step, lazy R1, G step, lazy
path length, EMA, ADA), the non-finite guard, the tick (what a run writes and when) and the signals. Does
not own the losses' mathematics (losses.py), the networks (modules.py), the data (dataset.py), the
augmentation pipeline (augment.py), the hyperparameters' definitions (config.py), multi-process plumbing
(distributed.py) or how files and checkpoints are written and read (runs.py).

    python train.py                                    # the demo preset on the built-in demo data
    python train.py --preset oasis256 --data /path/to/oasis
    python train.py --resume runs/00003-oasis256       # continue exactly where it stopped
    torchrun --nproc_per_node=2 train.py --preset oasis256 --data /path/to/oasis
"""

import copy
import dataclasses
import json
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import augment
import config as config_lib
import dataset
import distributed
import losses
import monitor
import runs
import transfer
from modules import count_params

HEALTH_CHECK_INTERVAL = 4      # iterations between host reads of the non-finite counters (ADA reads at 4 too)


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. non-finite steps in a row); the message says why and what to change."""


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
        with torch.random.fork_rng(devices=[]):                # initial networks from --seed, equal on every rank
            torch.manual_seed(cfg.seed)
            self.G, self.D = runs.build_networks(cfg, conv_clamp=cfg.conv_clamp if self.amp_dtype else None)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.G = self.G.to(device, memory_format=self.memory_format).train()
        self.D = self.D.to(device, memory_format=self.memory_format).train()
        self.D_trainable = transfer.freeze_d(self.D, cfg.freeze_d)       # all of D's parameters unless --freeze_d
        # --compile: compiled forwards for the first-order D and G steps; R1 and path length need double
        # backward, which compiled graphs do not give, so they run the eager modules (same parameters).
        self.synthesis_fast, self.D_fast = self.G.synthesis, self.D
        if cfg.compile:
            self.synthesis_fast, self.D_fast = torch.compile(self.G.synthesis), torch.compile(self.D)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        (g_lr, g_betas), (d_lr, d_betas) = self.adam_hparams()
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
        torch.manual_seed(cfg.seed * world_size + rank)       # this process's latents, noise and mixing (--seed)
        self._ada_sum = torch.zeros([], device=device)
        self._ada_count = 0
        self.stats = {}

    @property
    def r1_gamma(self) -> float:
        return self.cfg.resolved_r1_gamma()

    def adam_hparams(self):
        """((lr, betas) of G, (lr, betas) of D) from the config, with the lazy-regularization correction."""
        cfg, betas = self.cfg, self.cfg.adam_betas()
        g = losses.lazy_adam_hparams(cfg.lr, betas, cfg.pl_interval) if cfg.pl_weight > 0 else (cfg.lr, betas)
        d = losses.lazy_adam_hparams(cfg.lr, betas, cfg.r1_interval) if self.r1_gamma > 0 else (cfg.lr, betas)
        return g, d

    # -- one iteration: D step, lazy R1, G step, lazy path length, EMA, ADA ---------------------

    def step(self) -> None:
        idx = self.sampler.next(self.batch_gpu)
        reals = self.data.batch(idx, device=self.device)                # [B, C, R, R] in [-1, 1]
        reals = reals.contiguous(memory_format=self.memory_format)
        c = self.data.label_batch(idx, device=self.device) if self.cfg.c_dim else None   # [B, c_dim]
        self.d_step(reals, c)
        if self.r1_gamma > 0 and self.batch_idx % self.cfg.r1_interval == 0:
            self.r1_step(reals, c)
        self.g_step()
        if self.cfg.pl_weight > 0 and self.batch_idx % self.cfg.pl_interval == 0:
            self.pl_step()
        losses.update_ema(self.G_ema, self.G, losses.ema_beta(self.cfg.batch, self.cfg.resolved_ema_kimg(), self.cfg.ema_rampup,
                                                self.cur_nimg))
        # w_avg moved with each rank's own batches; its update is linear in the batch means, so the
        # rank average equals tracking the global batch.
        distributed.all_reduce_mean_([self.G.mapping.w_avg], self.world_size)
        self.cur_nimg += self.cfg.batch
        self.batch_idx += 1
        if self.cfg.aug == "ada" and self.batch_idx % self.cfg.ada_interval == 0:
            self.ada_update()
        if self.batch_idx % HEALTH_CHECK_INTERVAL == 0:
            self.check_nonfinite()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def latents(self, n: int):
        """(z [n, z_dim], labels [n, c_dim] of random training images, or None when unconditional): what G
        is given, the labels following the data's label distribution as in StyleGAN2-ADA."""
        z = torch.randn(n, self.cfg.z_dim, device=self.device)
        if not self.cfg.c_dim:
            return z, None
        return z, self.data.label_batch(torch.randint(len(self.data), (n,)).numpy(), device=self.device)

    def run_G(self, z: torch.Tensor, c=None, fast: bool = False):
        """Images and ws from z (and labels c), with style mixing: a second z takes over from a random
        crossover. fast: the compiled synthesis network (--compile), for first-order steps only."""
        ws = self.G.mapping(z, c, update_w_avg=True)                  # [N, num_ws, w_dim]
        if self.cfg.style_mixing > 0 and torch.rand([]).item() < self.cfg.style_mixing:
            cutoff = int(torch.randint(1, ws.shape[1], []).item())
            ws[:, cutoff:] = self.G.mapping(torch.randn_like(z), c)[:, cutoff:]
        with self.autocast():
            img = (self.synthesis_fast if fast else self.G.synthesis)(ws, noise_mode="random" if self.cfg.noise else "none")
        return img.float(), ws

    def run_D(self, img: torch.Tensor, c=None, fast: bool = False) -> torch.Tensor:
        """D's logits for images (and labels c), augmented first (every image D sees, the R1 pass included).
        fast: the compiled D (--compile), for first-order steps only."""
        if self.augment_pipe is not None and self.ada_p > 0:
            self.augment_pipe.p = self.ada_p
            img = self.augment_pipe(img)
        with self.autocast():
            return (self.D_fast if fast else self.D)(img, c).float()  # [N, 1]

    def d_step(self, reals: torch.Tensor, c_real=None) -> None:
        z, c = self.latents(self.batch_gpu)
        with torch.no_grad():
            fakes, _ = self.run_G(z, c, fast=True)
        real_logits = self.run_D(reals, c_real, fast=True)
        loss = losses.d_logistic_loss(real_logits, self.run_D(fakes, c, fast=True)).mean()
        self.record("loss_D", loss)
        self.record("D_real", real_logits.mean())
        if self.cfg.aug == "ada":
            self._ada_sum += real_logits.detach().sign().sum()
            self._ada_count += real_logits.shape[0]
        self.optimize(self.D, self.opt_D, loss, "D")

    def r1_step(self, reals: torch.Tensor, c_real=None) -> None:
        reals = reals.detach().requires_grad_(True)
        penalty = losses.r1_penalty(reals, self.run_D(reals, c_real))
        self.record("r1_penalty", penalty.mean())
        self.optimize(self.D, self.opt_D, penalty.mean() * (self.r1_gamma / 2) * self.cfg.r1_interval, "R1")

    def g_step(self) -> None:
        self.D.requires_grad_(False)
        z, c = self.latents(self.batch_gpu)
        fakes, _ = self.run_G(z, c, fast=True)
        loss = losses.g_nonsaturating_loss(self.run_D(fakes, c, fast=True)).mean()
        for p in self.D_trainable:                                    # --freeze_d layers stay off
            p.requires_grad_(True)
        self.record("loss_G", loss)
        self.optimize(self.G, self.opt_G, loss, "G")

    def pl_step(self) -> None:
        fakes, ws = self.run_G(*self.latents(self.batch_gpu // self.cfg.pl_batch_shrink))
        lengths = losses.path_lengths(fakes, ws)
        mean = None
        if self.world_size > 1:                                       # global mean value, local gradient
            mean = lengths.mean()
            total = mean.detach().clone()
            dist.all_reduce(total)
            mean = mean + (total / self.world_size - mean.detach())
        penalty, a = losses.path_length_penalty(lengths, self.pl_mean, self.cfg.pl_decay, mean)
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
        distributed.all_reduce_mean_(grads, self.world_size)
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
                    f"--r1_gamma or --mixed_precision=fp32")
        bad = self.nonfinite_weights()
        if bad is not None:
            raise TrainingStopped(f"the weights became NaN or inf ({bad}) by step {self.batch_idx}, through steps "
                                  f"whose gradients were finite: the updates are too large; try a lower --lr")

    def nonfinite_weights(self):
        """The first parameter of G or D that holds NaN or inf, or None (one device read)."""
        named = [(f"{key}.{n}", p) for key, net in (("G", self.G), ("D", self.D)) for n, p in net.named_parameters()]
        norms = torch.stack(torch._foreach_norm([p.detach() for _, p in named]))
        finite = torch.isfinite(norms)
        if bool(finite.all()):
            return None
        return named[int((~finite).nonzero()[0])][0]

    def nonfinite_streak(self) -> int:
        """Non-finite steps in a row so far in the phase with the longest such streak (reads the device)."""
        return max((int(v) for v in self.nonfinite_run.values()), default=0)

    def ada_update(self) -> None:
        stat = torch.stack([self._ada_sum, torch.tensor(float(self._ada_count), device=self.device)])
        if self.world_size > 1:
            dist.all_reduce(stat)
        self.ada_p = losses.ada_adjust(self.ada_p, (stat[0] / stat[1]).item(), self.cfg.ada_target, self.cfg.batch,
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
            "format": runs.CHECKPOINT_FORMAT, "version": runs.CHECKPOINT_VERSION,
            "config": json.loads(self.cfg.to_json()),
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "pl_mean": self.pl_mean.detach().cpu(), "ada_p": float(self.ada_p),
            "ada_sum": self._ada_sum.detach().cpu(), "ada_count": self._ada_count,
            "cur_nimg": self.cur_nimg, "batch_idx": self.batch_idx, "tick": self.tick,
            "nonfinite_total": int(self.nonfinite_total),
            "nonfinite_run": {k: int(v) for k, v in self.nonfinite_run.items()},
            "sampler": self.sampler.state_dict(), "world_size": self.world_size,
            "rng": distributed.gather_rng_states(self.device, self.world_size),
        }

    def load_state_dict(self, state: dict, path="checkpoint") -> None:
        """Continue from a checkpoint (runs.load_checkpoint checked its keys and weights). The optimizers
        keep their moments but take lr and betas from the current config, so options given at resume apply."""
        runs.load_networks_into({"G": self.G, "D": self.D, "G_ema": self.G_ema}, state, path)
        try:
            self.opt_G.load_state_dict(state["opt_G"])
            self.opt_D.load_state_dict(state["opt_D"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise runs.RunError(f"{path}: its optimizer state does not match the networks ({e}); the file is "
                                f"damaged or was written by another version") from None
        for opt, (lr, betas) in zip((self.opt_G, self.opt_D), self.adam_hparams()):
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, betas
        self.pl_mean.copy_(state["pl_mean"])
        self.ada_p = state["ada_p"]
        self._ada_sum.copy_(state["ada_sum"])
        self._ada_count = state["ada_count"]
        self.cur_nimg, self.batch_idx, self.tick = state["cur_nimg"], state["batch_idx"], state["tick"]
        self.nonfinite_total.fill_(state["nonfinite_total"])
        self.nonfinite_run = {k: torch.tensor(v, device=self.device) for k, v in state["nonfinite_run"].items()}
        note = self.sampler.load_state_dict(state["sampler"])
        if note:
            self.log(f"note: {note}")
        rng = state["rng"]
        if state["world_size"] == self.world_size:
            torch.set_rng_state(rng["cpu"][self.rank])
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"][self.rank], self.device)
        else:
            self.log(f"note: the checkpoint was written with {state['world_size']} process(es), this run has "
                     f"{self.world_size}; training continues but the random streams are re-seeded")
            torch.manual_seed(self.cfg.seed * self.world_size + self.rank + state["batch_idx"])

    def checkpoint_bytes(self) -> int:
        """Size of checkpoint.pt: G, D and G_ema plus Adam's two moments of G and D (float32)."""
        n_G, n_D = (sum(p.numel() for p in net.parameters()) for net in (self.G, self.D))
        return 4 * (4 * n_G + 3 * n_D) + (1 << 20)


def make_augment_pipe(cfg: config_lib.TrainConfig, device: torch.device):
    """The augmentation pipe for --aug=ada|fixed (augment.py), or None for noaug."""
    if cfg.aug == "noaug":
        return None
    return augment.AugmentPipe(img_channels=cfg.img_channels, pipeline=cfg.aug_pipe, p=cfg.p,
                               mask_channels=config_lib.MASK_CLASSES if cfg.masks else 0).to(device)


# ----------------------------------------------------------------------------------------------
# What a run writes: grids, plots, checkpoints

class Run:
    """The run folder of one training process group: where it is, what has been written, and the lock.
    Only rank 0 writes (is_main)."""

    def __init__(self, trainer: Trainer, run_dir: Path, is_main: bool, log):
        self.trainer, self.dir, self.is_main, self.log = trainer, run_dir, is_main, log
        self.z_grid = monitor.grid_latents(trainer.cfg, trainer.data, trainer.device)
        self.last_checkpoint = time.time()
        self.quality = self.board = self.lock = None

    def save_checkpoints(self, snapshot: bool) -> None:
        """snapshot-<kimg>.pt (networks only) first, then checkpoint.pt (everything): a kill between the two
        replays the tick on resume and writes the snapshot again, so no snapshot is lost. Deferred while a
        non-finite streak is going on, so checkpoint.pt never holds a step inside one."""
        t = self.trainer
        streak = t.nonfinite_streak()
        state = t.state_dict()                                       # collective: every rank takes part
        if not self.is_main:
            return None
        if streak:
            self.log(f"checkpoint deferred at kimg {t.cur_nimg / 1000:.3f}: {streak} non-finite step(s) in a row")
            return None
        written = []
        if snapshot:
            name = f"snapshot-{runs.kimg_tag(t.cur_nimg)}.pt"
            runs.save_checkpoint(self.dir / name, {k: v for k, v in state.items() if not k.startswith("opt_")})
            written.append(name)
        runs.save_checkpoint(self.dir / "checkpoint.pt", state)
        runs.append_log(self.dir / "log.jsonl", {"event": "checkpoint", "kimg": t.cur_nimg / 1000, "step": t.batch_idx,
                                                 "files": written + ["checkpoint.pt"], "time": time.time()})
        self.last_checkpoint = time.time()
        return written[0] if snapshot else "checkpoint.pt"

    def save_pictures(self, snapshot: bool) -> None:
        """losses.png, metrics.png and, at snapshots, fakes<kimg>.png (also to TensorBoard). A failure here is a
        warning: the run goes on."""
        try:
            monitor.plot_losses(self.dir / "log.jsonl", self.dir / "losses.png")
            monitor.plot_metrics(self.dir / "log.jsonl", self.dir / "metrics.png")
            if snapshot:
                kimg = self.trainer.cur_nimg
                grid = monitor.save_fakes(self.trainer.G_ema, self.trainer.cfg, self.z_grid, self.dir / f"fakes{runs.kimg_tag(kimg)}.png")
                self.board.image("fakes", grid, kimg / 1000)
        except (runs.RunError, OSError, ValueError) as e:
            self.log(f"warning: {e}; training goes on")


def open_run(cfg, trainer: Trainer, data, run_dir, resumed: bool, is_main: bool, log) -> Run:
    """Create or reopen the run folder (rank 0): lock it, clean temporaries of dead processes, check the disk
    has room for a checkpoint, write config.json, the start line of log.jsonl, reals.png and the first fakes."""
    lock = None
    if is_main:
        run_dir = run_dir if run_dir is not None else runs.new_run_dir(Path(cfg.outdir), cfg.preset)
        lock = runs.RunLock(run_dir).acquire()
    try:
        run = Run(trainer, Path(distributed.from_rank0(str(run_dir) if is_main else None, trainer.world_size)),
                  is_main, log)
        run.lock = lock
        if is_main:
            _prepare_run_dir(run, cfg, data, resumed)
        return run
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _prepare_run_dir(run: Run, cfg, data, resumed: bool) -> None:
    trainer, run_dir, log = run.trainer, run.dir, run.log
    removed = runs.remove_stale_temporaries(run_dir)
    if removed:
        log(f"removed {len(removed)} temporary file(s) left by an interrupted write: {', '.join(removed[:3])}")
    need, free = 2 * trainer.checkpoint_bytes(), shutil.disk_usage(run_dir).free
    if free < need:
        raise TrainingStopped(f"{run_dir}: {free / 2 ** 20:.0f} MB free, a checkpoint needs about {need / 2 ** 20:.0f} "
                              f"MB (with its temporary copy); free space or choose another --outdir")
    runs.write_text(run_dir / "config.json", cfg.to_json())
    log(f"run folder {run_dir}: G {count_params(trainer.G):,} / D {count_params(trainer.D):,} parameters, "
        f"{len(data)} training images{' (with x-flips)' if cfg.mirror else ''}, device {trainer.device}, "
        f"{'bf16' if trainer.amp_dtype else 'fp32'}, {trainer.world_size} process(es)")
    runs.append_log(run_dir / "log.jsonl", {"event": "resume" if resumed else "start", "kimg": trainer.cur_nimg / 1000,
                                            "tick": trainer.tick, "step": trainer.batch_idx, "time": time.time()})
    if not (run_dir / "reals.png").exists():
        cols, rows = cfg.grid_size()
        idx = np.random.default_rng(cfg.seed).choice(data.num_images, size=min(cols * rows, data.num_images),
                                                     replace=False)
        runs.save_grid(dataset.pair_tiles(*data.get(idx)), run_dir / "reals.png", cols)
    if cfg.metrics_num > 0:
        run.quality = monitor.QualityTracker(cfg, data, trainer.device, log)
    run.board = monitor.TensorBoard(run_dir, cfg.tensorboard, log)
    if trainer.cur_nimg == 0:
        run.board.image("fakes", monitor.save_fakes(trainer.G_ema, cfg, run.z_grid, run_dir / "fakes000000.png"), 0)


def end_tick(run: Run, tick_start_nimg: int, tick_start_time: float, done: bool) -> None:
    """The tick's bookkeeping: check health, log the statistics, save checkpoints (before any picture, so a
    failed plot cannot cost a checkpoint), then plots and grids."""
    t, cfg = run.trainer, run.trainer.cfg
    t.check_nonfinite()                                              # before anything is written
    images = t.cur_nimg - tick_start_nimg
    t.tick += 1 if images > 0 else 0
    seconds = time.time() - tick_start_time
    snapshot = done or (cfg.snap > 0 and t.tick % cfg.snap == 0)
    record = {"tick": t.tick, "kimg": t.cur_nimg / 1000, "step": t.batch_idx, "seconds": round(seconds, 3),
              "sec_per_kimg": round(seconds / max(images / 1000, 1e-9), 3),
              "images_per_s": round(images / max(seconds, 1e-9), 2), **t.pop_stats(),
              "pl_mean": t.pl_mean.item(), "ada_p": t.ada_p, "nonfinite_skipped": int(t.nonfinite_total),
              "peak_mem_gb": round(monitor.peak_memory_gb(t.device), 3), "time": time.time()}
    if snapshot:
        record["ranks_in_sync"] = distributed.check_ranks_in_sync({"G": t.G, "D": t.D}, t.world_size)
    if run.quality is not None and images > 0 and run.quality.due(t.tick, snapshot):
        record.update(run.quality.score(t.G_ema))                    # rank 0 only: G_ema is the same everywhere
    if run.is_main and images > 0:
        runs.append_log(run.dir / "log.jsonl", record)
        run.board.scalars(record)
        status = "  ".join(f"{k} {record[k]:.4g}" for k in ("kimg", "sec_per_kimg", "loss_G", "loss_D") if k in record)
        from tqdm import tqdm
        tqdm.write(f"tick {t.tick:<5} {status}  p {t.ada_p:.3f}", file=sys.stderr)
    if snapshot or time.time() - run.last_checkpoint >= cfg.checkpoint_minutes * 60:
        written = run.save_checkpoints(snapshot=snapshot and images > 0)
        if written and written.startswith("snapshot") and monitor.update_best(run.dir, record, written):
            run.log(f"best snapshot so far: {written} ({'%s %.4g' % monitor.criterion(record)})")
    if run.is_main and images > 0:
        run.save_pictures(snapshot)
    if t.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(t.device)


# ----------------------------------------------------------------------------------------------
# Signals and the loop

class StopSignals:
    """While active, SIGINT / SIGTERM ask the loop to save a checkpoint and stop after the current step (a
    second one stops at once). The previous handlers are restored on exit."""
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal, self._previous = None, {}

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum



def run_loop(run: Run, stop: StopSignals) -> None:
    """Train to cfg.kimg: steps, and at every tick end (or signal) the tick's bookkeeping."""
    from tqdm import tqdm
    t, cfg = run.trainer, run.trainer.cfg
    total_nimg = int(cfg.kimg * 1000)
    tick_start_nimg, tick_start_time = t.cur_nimg, time.time()
    if t.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(t.device)
    bar = tqdm(total=total_nimg, initial=min(t.cur_nimg, total_nimg), unit="kimg", unit_scale=0.001,
               disable=not run.is_main, file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}]")
    with bar:
        while True:
            if t.cur_nimg < total_nimg:
                t.step()
                bar.update(min(cfg.batch, total_nimg - bar.n))
            done = t.cur_nimg >= total_nimg
            interrupted = distributed.any_rank(stop.signal is not None, t.device, t.world_size)
            if done or interrupted or t.cur_nimg >= tick_start_nimg + cfg.tick_kimg * 1000:
                end_tick(run, tick_start_nimg, tick_start_time, done)
                tick_start_nimg, tick_start_time = t.cur_nimg, time.time()
            if done:
                run.log(f"done: {t.cur_nimg / 1000:.1f} kimg; results in {run.dir}")
                return
            if interrupted:
                run.save_checkpoints(snapshot=False)
                name = "SIGINT" if stop.signal == signal.SIGINT else "SIGTERM"
                run.log(f"{name}: checkpoint saved at kimg {t.cur_nimg / 1000:.1f}; continue with "
                        f"python train.py --resume {run.dir}")
                raise SystemExit(130 if stop.signal == signal.SIGINT else 143)


# ----------------------------------------------------------------------------------------------
# main

def load_data(cfg, is_main: bool, world_size: int, log):
    """The training images: rank 0 decodes (or builds the demo) first, the other ranks then read its cache."""
    data_path = cfg.data
    if not data_path:
        data_path = str(dataset.ensure_demo(log=log)) if is_main else str(dataset.DEFAULT_DATA)
    if world_size > 1 and not is_main:
        dist.barrier()
    data = dataset.ImageDataset(data_path, split=cfg.split, resolution=cfg.resolution, img_channels=cfg.img_channels,
                                fit=cfg.fit, mirror=cfg.mirror, skip_bad=cfg.skip_bad, with_masks=cfg.masks,
                                cache_dir=cfg.cache_dir or None, log=log, cond=cfg.cond)
    if world_size > 1 and is_main:
        dist.barrier()
    return data


def with_labels(cfg, data, resumed: bool):
    """cfg with c_dim and label_names set from the data's labels (--cond); a resumed run's data must give
    labels of the checkpoint's width."""
    if cfg.cond == "none":
        return cfg
    names = ",".join(data.label_names)
    if resumed and (data.c_dim, names) != (cfg.c_dim, cfg.label_names):
        raise config_lib.ConfigError(f"--cond={cfg.cond}: the data now give labels {names!r} ({data.c_dim} values), "
                                     f"the checkpoint was trained on {cfg.label_names!r} ({cfg.c_dim})")
    if resumed:                                                   # encoding and range stay the checkpoint's
        return cfg
    cfg = dataclasses.replace(cfg, c_dim=data.c_dim, label_names=names)
    encoding = config_lib.label_encoding(cfg)
    return dataclasses.replace(cfg, label_encoding=encoding,
                               label_range=config_lib.data_label_range(data.labels) if encoding == "fourier" else "")


def train(cfg: config_lib.TrainConfig, given: dict = None) -> Path:
    """Train with cfg; when cfg.resume is set, `given` (the options typed on the command line) are
    applied on top of the checkpoint's config."""
    rank, world_size, local_rank = distributed.dist_env()
    is_main = rank == 0
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if is_main else (lambda msg: None)
    device = config_lib.resolve_device(cfg.device, local_rank)
    state = run_dir = source = None
    changed = []
    if cfg.resume:
        cfg, state, run_dir, changed = runs.load_for_resume(cfg.resume, given if given is not None else {})
    elif cfg.init_from:                                              # transfer learning: the source's shapes
        source = transfer.load_source(cfg.init_from)
        cfg = transfer.config_for(cfg, given if given is not None else {}, source[1])
    config_lib.validate(cfg, world_size)
    if cfg.dry_run:
        G, D = runs.build_networks(cfg)
        if is_main:
            print(cfg.to_json())
            print(f"G {count_params(G):,} parameters, D {count_params(D):,} parameters, num_ws {G.num_ws}, "
                  f"{world_size} process(es), {cfg.batch // world_size} images per process, device {device}")
        return None
    if is_main:                                                      # cheap checks before decoding anything
        runs.check_writable(run_dir if run_dir is not None else cfg.outdir, "--resume" if run_dir else "--outdir")
        if run_dir is not None:
            runs.RunLock(run_dir).acquire().release()                # fail now if another process trains in it
        if changed:
            log(f"options changed at resume: {', '.join(changed)}")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    data = load_data(cfg, is_main, world_size, log)
    cfg = with_labels(cfg, data, resumed=state is not None)
    trainer = Trainer(cfg, device, rank, world_size, data, log)
    if state is not None:
        trainer.load_state_dict(state, run_dir / "checkpoint.pt")
        state = None
    if source is not None:
        transfer.init_networks({"G": trainer.G, "D": trainer.D, "G_ema": trainer.G_ema}, *source, cfg, log)
        log(f"initialised G, D and G_ema from {source[2]} (trained {source[0].get('cur_nimg', 0) / 1000:g} kimg "
            f"there); optimizers and counters start fresh")
        source = None
    run = open_run(cfg, trainer, data, run_dir, bool(cfg.resume), is_main, log)
    try:
        with StopSignals() as stop:
            run_loop(run, stop)
    except TrainingStopped as e:
        raise TrainingStopped(f"{e}; {runs.last_checkpoint(run.dir)}") from None
    finally:
        if run.board is not None:
            run.board.close()
        if run.lock is not None:
            run.lock.release()
    return run.dir


def main(argv=None) -> int:
    """Exit codes: 0 done, 1 the run stopped or an input is bad (one line), 2 a usage error (one line),
    130 / 143 stopped by SIGINT / SIGTERM with a checkpoint saved."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(config_lib.help_text())
        return 0
    try:
        train(config_lib.parse_args(argv), config_lib.parse_given(argv))
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TrainingStopped, runs.RunError, dataset.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
