"""The training state of one StyleGAN2 process and one iteration of it: everything a checkpoint holds.

Owns G, D, G_ema, the optimizers and the counters (`Trainer`), one iteration (D step, lazy R1, G step, lazy
path length, EMA, ADA), the skipping and counting of non-finite steps (`NonFiniteGuard`), the random streams
the process draws from (`RandomStreams`: training neither reads nor reseeds the global torch RNG) and the
checkpoint state (`Trainer.state_dict`). Does not own the losses' mathematics (losses.py), the networks
(modules.py), the data (dataset.py), the augmentation pipeline (augment.py), multi-process plumbing
(distributed.py), the run folder, ticks and signals (train.py) or how checkpoints are written and read
(runs.py).
"""

import contextlib
import copy
import json

import numpy as np
import torch
import torch.distributed as dist

import augment
import config as config_lib
import consistency
import dataset
import distributed
import errors
import losses
import ops
import runs
import transfer

HEALTH_CHECK_INTERVAL = 4      # iterations between host reads of the non-finite counters (ADA reads at 4 too)


class TrainingStopped(errors.ProjectError):
    """The run cannot go on (e.g. non-finite steps in a row); the message says why and what to change."""


# ----------------------------------------------------------------------------------------------
# Non-finite steps

class NonFiniteGuard:
    """Steps whose loss or gradients are NaN or inf: the optimizer skips them, the guard counts them on the
    device (no step waits for the GPU) and `check()`, every few iterations, stops the run after
    max_nonfinite skipped steps in a row in one phase (D, R1, G, PL) or as soon as a weight is NaN or inf.
    Checkpoints hold its counters as nonfinite_total and nonfinite_run."""

    def __init__(self, max_nonfinite: int, batch: int, device: torch.device):
        self.max_nonfinite, self.batch, self.device = max_nonfinite, batch, device
        self.total = torch.zeros([], dtype=torch.long, device=device)  # skipped steps in the whole run
        self.run = {}                                                  # phase -> skipped steps in a row
        self.stop = {}                                                 # phase -> step that hit max_nonfinite, or -1

    def record(self, phase: str, step: int, loss: torch.Tensor, grads, world_size: int = 1) -> torch.Tensor:
        """Whether this step of `phase` may be taken: its loss and every gradient finite, on every rank. A
        device flag (nothing here waits for the GPU); a step that may not is counted."""
        finite = torch.isfinite(loss.detach()) & torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()
        if world_size > 1:
            flag = finite.float()
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag > 0
        bad = (~finite).long()
        run = (self.run.get(phase, 0) + 1) * bad
        stop = self.stop.get(phase, torch.full([], -1, dtype=torch.long, device=self.device))
        self.stop[phase] = torch.where((stop < 0) & (run >= self.max_nonfinite), torch.full_like(stop, step), stop)
        self.run[phase] = run
        self.total += bad
        return finite

    def check(self, step: int, nets: dict) -> None:
        """Raise TrainingStopped if some phase had max_nonfinite non-finite steps in a row, or a weight of
        nets ({"G": G, "D": D}) is NaN or inf by `step` (reads the device)."""
        for phase, stopped in self.stop.items():
            stopped = int(stopped)
            if stopped >= 0:
                raise TrainingStopped(
                    f"{self.max_nonfinite} non-finite steps in a row (last in the {phase} step at "
                    f"kimg {stopped * self.batch / 1000:.1f}, step {stopped}); try a lower --lr, a larger "
                    f"--r1_gamma or --mixed_precision=fp32")
        bad = nonfinite_weights(nets)
        if bad is not None:
            raise TrainingStopped(f"the weights became NaN or inf ({bad}) by step {step}, through steps "
                                  f"whose gradients were finite: the updates are too large; try a lower --lr")

    def streak(self) -> int:
        """Non-finite steps in a row so far in the phase with the longest such streak (reads the device)."""
        return max((int(v) for v in self.run.values()), default=0)

    def state_dict(self) -> dict:
        return {"nonfinite_total": int(self.total), "nonfinite_run": {k: int(v) for k, v in self.run.items()}}

    def load_state_dict(self, state: dict) -> None:
        """The counters of a checkpoint. Only a run's final checkpoint can hold a streak (train.py defers the
        others); no phase of it has reached max_nonfinite (the run would have stopped instead), and the next
        non-finite step continues its count."""
        self.total.fill_(state["nonfinite_total"])
        self.run = {k: torch.tensor(v, device=self.device) for k, v in state["nonfinite_run"].items()}
        self.stop = {}


def nonfinite_weights(nets: dict):
    """The first parameter of nets ({"G": G, ...}) that holds NaN or inf, as "G.name", or None (one device read)."""
    named = [(f"{key}.{n}", p) for key, net in nets.items() for n, p in net.named_parameters()]
    norms = torch.stack(torch._foreach_norm([p.detach() for _, p in named]))
    finite = torch.isfinite(norms)
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


# ----------------------------------------------------------------------------------------------
# Random streams

class RandomStreams:
    """The random numbers of one training process, from generators of its own, seeded from --seed as
    seed * world_size + rank; checkpoints hold their states. The global torch RNG is neither read nor
    reseeded, so nothing else in the program moves training's draws and training moves no one else's.

    latents: z (and the style-mixing z) and the path-length noise, on the device.
    choices: the labels G is given, the style-mixing coin and its crossover, on the CPU (the host reads them).
    layers:  what modules.py and augment.py draw from the global RNG (G's noise inputs, the augmentations):
             its state stands in for the device's global RNG inside `scope()` only.
    """
    NAMES = ("latents", "choices", "layers")

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.latents = torch.Generator(device)
        self.choices = torch.Generator()
        self.layers = torch.Generator(device)
        self.seed(seed)

    def seed(self, *entropy: int) -> None:
        """Independent streams from one or more integers (numpy's SeedSequence derives one seed per stream)."""
        seeds = np.random.SeedSequence(list(entropy)).generate_state(len(self.NAMES), np.uint64)
        for name, s in zip(self.NAMES, seeds):
            getattr(self, name).manual_seed(int(s))

    @contextlib.contextmanager
    def scope(self):
        """Inside: the device's global RNG runs from the `layers` stream (for code that takes no generator).
        After: the global RNG is exactly as it was before."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else [], device_type="cuda"):
            if cuda:
                torch.cuda.set_rng_state(self.layers.get_state(), self.device)
            else:
                torch.set_rng_state(self.layers.get_state())
            yield
            self.layers.set_state(torch.cuda.get_rng_state(self.device) if cuda else torch.get_rng_state())

    def state_dict(self) -> dict:
        return {name: getattr(self, name).get_state() for name in self.NAMES}      # uint8 CPU tensors

    def load_state_dict(self, state: dict) -> None:
        for name in self.NAMES:
            getattr(self, name).set_state(state[name])


# ----------------------------------------------------------------------------------------------
# The training state and one iteration

class Trainer:
    """G, D, G_ema, optimizers, counters, random streams and running statistics: everything a checkpoint holds."""

    def __init__(self, cfg: config_lib.TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1,
                 data=None, log=print):
        self.cfg, self.device, self.rank, self.world_size, self.log = cfg, device, rank, world_size, log
        self.batch_gpu = cfg.batch // world_size
        mp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        self.amp_dtype = torch.bfloat16 if mp == "bf16" else None
        # The initial networks from --seed, equal on every rank. They are built on the CPU, whose global
        # generator is seeded here and restored after: the caller's RNG state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(cfg.seed)
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
        # --mask_consistency: the segmenter S trained on real pairs alongside D (consistency.py)
        self.consistency = consistency.Consistency(cfg, device, self.memory_format) if cfg.mask_consistency > 0 else None
        self.ada_p = cfg.p
        self.cur_nimg, self.batch_idx, self.tick = 0, 0, 0
        self.guard = NonFiniteGuard(cfg.max_nonfinite, cfg.batch, device)
        self.data = data
        self.sampler = dataset.InfiniteSampler(len(data), seed=cfg.seed, rank=rank, world_size=world_size) \
            if data is not None else None
        self.rng = RandomStreams(cfg.seed * world_size + rank, device)    # this process's draws (--seed)
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
        reals = self.data.batch(idx, device=self.device, mask_encoding=self.cfg.mask_encoding)   # [B, C, R, R]
        reals = reals.contiguous(memory_format=self.memory_format)
        c = self.data.label_batch(idx, device=self.device) if self.cfg.c_dim else None   # [B, c_dim]
        self.d_step(reals, c)
        if self.consistency is not None:
            self.s_step(reals)
        if self.r1_gamma > 0 and self.batch_idx % self.cfg.r1_interval == 0:
            self.r1_step(reals, c)
        self.g_step()
        if self.cfg.pl_weight > 0 and self.batch_idx % self.cfg.pl_interval == 0:
            self.pl_step()
        losses.update_ema(self.G_ema, self.G, losses.ema_beta(self.cfg.batch, self.cfg.resolved_ema_kimg(),
                                                              self.cfg.ema_rampup, self.cur_nimg))
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
        z = torch.randn(n, self.cfg.z_dim, device=self.device, generator=self.rng.latents)
        if not self.cfg.c_dim:
            return z, None
        idx = torch.randint(len(self.data), (n,), generator=self.rng.choices)
        return z, self.data.label_batch(idx.numpy(), device=self.device)

    def run_G(self, z: torch.Tensor, c=None, fast: bool = False):
        """Images and ws from z (and labels c), with style mixing: a second z takes over from a random
        crossover. fast: the compiled synthesis network (--compile), for first-order steps only."""
        ws = self.G.mapping(z, c, update_w_avg=True)                  # [N, num_ws, w_dim]
        if self.cfg.style_mixing > 0 and torch.rand([], generator=self.rng.choices).item() < self.cfg.style_mixing:
            cutoff = int(torch.randint(1, ws.shape[1], [], generator=self.rng.choices))
            z2 = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=self.rng.latents)
            ws[:, cutoff:] = self.G.mapping(z2, c)[:, cutoff:]
        with self.rng.scope(), self.autocast():                       # noise inputs from the layers stream
            img = (self.synthesis_fast if fast else self.G.synthesis)(ws, noise_mode="random" if self.cfg.noise else "none")
        return img.float(), ws

    def mask_sigma(self) -> float:
        """The mask blur D sees now: --mask_blur, falling linearly to 0 over --mask_blur_kimg when that is set
        (StyleGAN3's blur_fade_kimg schedule, there on whole images)."""
        fade = self.cfg.mask_blur_kimg
        if fade <= 0:
            return self.cfg.mask_blur
        return self.cfg.mask_blur * max(0.0, 1.0 - self.cur_nimg / (fade * 1000))

    def run_D(self, img: torch.Tensor, c=None, fast: bool = False) -> torch.Tensor:
        """D's logits for images (and labels c), augmented first (every image D sees, the R1 pass included).
        fast: the compiled D (--compile), for first-order steps only."""
        n = self.cfg.img_channels
        if self.cfg.mask_snap:                                        # real masks are on the levels already
            mask, k = img[:, n:], config_lib.MASK_CLASSES
            snapped = dataset.mask_channels(dataset.mask_labels(mask, k), k, "level").to(mask.dtype)
            img = torch.cat([img[:, :n], mask + (snapped - mask).detach()], dim=1)   # the gradient straight through
        if self.augment_pipe is not None and self.ada_p > 0:
            self.augment_pipe.p = self.ada_p
            with self.rng.scope():                                    # augmentations from the layers stream
                img = self.augment_pipe(img)
        sigma = self.mask_sigma()
        if self.cfg.masks and (sigma > 0 or self.cfg.mask_gain != 1):
            mask = img[:, n:]                                         # the same for real and fake masks
            if sigma > 0:
                mask = ops.gaussian_blur(mask, sigma)
            img = torch.cat([img[:, :n], mask * self.cfg.mask_gain], dim=1)
        with self.autocast():
            return (self.D_fast if fast else self.D)(img, c).float()  # [N, 1]

    def d_step(self, reals: torch.Tensor, c_real=None) -> None:
        z, c = self.latents(self.batch_gpu)
        with torch.no_grad():
            fakes, _ = self.run_G(z, c, fast=True)
        real_logits = self.run_D(reals, c_real, fast=True)
        loss = losses.d_logistic_loss(real_logits, self.run_D(fakes, c, fast=True)).mean()
        if self.cfg.mask_mismatch > 0:               # real images with their masks moved: fake (matching-aware D)
            wrong = losses.misregistered(reals, self.cfg.img_channels, self.rng.choices)
            wrong_logits = self.run_D(wrong, c_real, fast=True)
            self.record("D_mismatch", wrong_logits.mean())
            loss = loss + self.cfg.mask_mismatch * torch.nn.functional.softplus(wrong_logits).mean()
        self.record("loss_D", loss)
        self.record("D_real", real_logits.mean())
        if self.cfg.aug == "ada":
            self._ada_sum += real_logits.detach().sign().sum()
            self._ada_count += real_logits.shape[0]
        self.optimize(self.D, self.opt_D, loss, "D")

    def s_step(self, reals: torch.Tensor) -> None:
        """One step of --mask_consistency's segmenter on the real pairs D just saw."""
        with self.autocast():
            loss = self.consistency.segmenter_loss(reals)
        self.record("S_loss", loss)
        self.optimize(self.consistency.net, self.consistency.opt, loss, "S")
        # batch-norm statistics moved with each rank's own reals; averaged so every rank holds the same S
        distributed.all_reduce_mean_([b for b in self.consistency.net.buffers() if b.is_floating_point()],
                                     self.world_size)
        self.consistency.steps += 1

    def r1_step(self, reals: torch.Tensor, c_real=None) -> None:
        reals = reals.detach().requires_grad_(True)
        channels = None if self.cfg.r1_mask else self.cfg.img_channels   # --r1_mask=false: the image channels only
        penalty = losses.r1_penalty(reals, self.run_D(reals, c_real), channels)
        self.record("r1_penalty", penalty.mean())
        self.optimize(self.D, self.opt_D, penalty.mean() * (self.r1_gamma / 2) * self.cfg.r1_interval, "R1")

    def g_step(self) -> None:
        self.D.requires_grad_(False)
        z, c = self.latents(self.batch_gpu)
        fakes, _ = self.run_G(z, c, fast=True)
        loss = losses.g_nonsaturating_loss(self.run_D(fakes, c, fast=True)).mean()
        self.record("loss_G", loss)
        if self.consistency is not None and self.consistency.active:    # --mask_consistency, after S's warm-up
            term = self.consistency.generator_term(fakes).mean()
            self.record("G_consistency", term)
            loss = loss + self.cfg.mask_consistency * term
        for p in self.D_trainable:                                    # --freeze_d layers stay off
            p.requires_grad_(True)
        self.optimize(self.G, self.opt_G, loss, "G")

    def pl_step(self) -> None:
        fakes, ws = self.run_G(*self.latents(self.batch_gpu // self.cfg.pl_batch_shrink))
        lengths = losses.path_lengths(fakes, ws, generator=self.rng.latents)
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
        """Backward, average gradients over ranks, and step, unless the loss or a gradient is not finite:
        then the guard counts the step and fused Adam skips it. Returns whether the step was taken, as a
        device flag: nothing here waits for the GPU."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        distributed.all_reduce_mean_(grads, self.world_size)
        finite = self.guard.record(phase, self.batch_idx, loss, grads, self.world_size)
        opt.found_inf = (~finite).float()                            # fused Adam leaves everything as it was
        opt.step()
        return finite

    def check_nonfinite(self) -> None:
        """Stop the run if some phase had max_nonfinite non-finite steps in a row or a weight is NaN or inf
        (reads the device)."""
        self.guard.check(self.batch_idx, {"G": self.G, "D": self.D})

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
        """Everything needed to continue exactly: plain tensors, numbers and strings only. "rng" holds every
        rank's random streams (collective)."""
        return {
            "format": runs.CHECKPOINT_FORMAT, "version": runs.CHECKPOINT_VERSION,
            "config": json.loads(self.cfg.to_json()),
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "pl_mean": self.pl_mean.detach().cpu(), "ada_p": float(self.ada_p),
            "ada_sum": self._ada_sum.detach().cpu(), "ada_count": self._ada_count,
            "cur_nimg": self.cur_nimg, "batch_idx": self.batch_idx, "tick": self.tick,
            **self.guard.state_dict(),                                # nonfinite_total, nonfinite_run
            "sampler": self.sampler.state_dict(), "world_size": self.world_size,
            "rng": distributed.gather_states(self.rng.state_dict(), self.world_size),
            **(self.consistency.state_dict() if self.consistency is not None else {}),   # S, opt_S, S_steps
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
        self.guard.load_state_dict(state)
        if self.consistency is not None:
            if "S" in state:
                self.consistency.load_state_dict(state)
            else:
                self.log("note: the checkpoint has no --mask_consistency segmenter; a new one starts training now")
        note = self.sampler.load_state_dict(state["sampler"])
        if note:
            self.log(f"note: {note}")
        self._load_rng(state)

    def _load_rng(self, state: dict) -> None:
        """This rank's random streams, or fresh ones (from --seed and the step) when the checkpoint's cannot
        continue: another number of processes, or a version 1 checkpoint (it held the global RNG's state)."""
        if state["version"] < 2:
            why = "the checkpoint was written by an older version, whose random state this one does not read"
        elif state["world_size"] != self.world_size:
            why = (f"the checkpoint was written with {state['world_size']} process(es), this run has "
                   f"{self.world_size}")
        else:
            self.rng.load_state_dict({name: states[self.rank] for name, states in state["rng"].items()})
            return
        self.log(f"note: {why}; training continues but the random streams are re-seeded")
        self.rng.seed(self.cfg.seed * self.world_size + self.rank, state["batch_idx"])

    def checkpoint_bytes(self) -> int:
        """Size of checkpoint.pt: G, D and G_ema plus Adam's two moments of G and D (float32)."""
        n_G, n_D = (sum(p.numel() for p in net.parameters()) for net in (self.G, self.D))
        return 4 * (4 * n_G + 3 * n_D) + (1 << 20)


def make_augment_pipe(cfg: config_lib.TrainConfig, device: torch.device):
    """The augmentation pipe for --aug=ada|fixed (augment.py), or None for noaug."""
    if cfg.aug == "noaug":
        return None
    return augment.AugmentPipe(img_channels=cfg.img_channels, pipeline=cfg.aug_pipe, p=cfg.p,
                               mask_channels=config_lib.mask_channels(cfg)).to(device)
