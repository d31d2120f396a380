"""StyleGAN2 training: the GAN loop with lazy R1 and path-length regularization, G EMA, bf16 mixed
precision, exact resume from plain-tensor checkpoints, and multi-GPU through torchrun.

Owns the run: the command line, the run folder (what a run writes and when: ticks, checkpoints, pictures),
the loop to --kimg, the signals, and reading the data and the checkpoint to start or resume from. Does not
own the training state or one iteration (trainer.py: optimizers, D step, R1, G step, path length, EMA, ADA,
the non-finite guard, the random streams), the losses' mathematics (losses.py), the networks (modules.py),
the data (dataset.py), the hyperparameters' definitions (config.py), multi-process plumbing
(distributed.py) or how files and checkpoints are written and read (runs.py).

    python train.py                                    # the demo preset on the built-in demo data
    python train.py --preset oasis256 --data /path/to/oasis
    python train.py --resume runs/00003-oasis256       # continue exactly where it stopped
    torchrun --nproc_per_node=2 train.py --preset oasis256 --data /path/to/oasis
"""

import dataclasses
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import config as config_lib
import dataset
import demo
import distributed
import errors
import monitor
import runs
import transfer
from modules import count_params
from trainer import Trainer, TrainingStopped


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
        self.deferred = None            # a checkpoint write put off by a non-finite streak: {"step", "snapshot"}

    def save_checkpoints(self, snapshot: bool, final: bool = False):
        """snapshot-<kimg>.pt (networks only) first, then checkpoint.pt (everything): a kill between the two
        replays the tick on resume and writes the snapshot again, so no snapshot is lost. While a non-finite
        streak is going on the write is deferred (logged in log.jsonl) until write_deferred finds the steps
        finite again, so checkpoint.pt never holds a step inside one; the final write (the end of the run, a
        signal) is not deferred: it keeps the streak's count, which a resume continues. Returns the first file
        written (None when deferred, and on ranks other than 0)."""
        t = self.trainer
        streak = t.guard.streak()                                    # the same on every rank
        if streak and not final:
            self._defer(snapshot, streak)
            return None
        deferred, self.deferred = self.deferred, None
        snapshot = snapshot or bool(deferred and deferred["snapshot"])
        state = t.state_dict()                                       # collective: every rank takes part
        bad = runs.nonfinite_tensor(state)                           # e.g. a buffer; the same on every rank
        if bad is not None:
            raise TrainingStopped(f"{'the final' if final else 'a'} checkpoint was not written: {bad} holds NaN or inf")
        if not self.is_main:
            return None
        written = []
        if snapshot:
            name = f"snapshot-{runs.kimg_tag(t.cur_nimg)}.pt"
            runs.save_checkpoint(self.dir / name, {k: v for k, v in state.items() if not k.startswith("opt_")})
            written.append(name)
        runs.save_checkpoint(self.dir / "checkpoint.pt", state)
        event = {"event": "checkpoint", "kimg": t.cur_nimg / 1000, "step": t.batch_idx,
                 "files": written + ["checkpoint.pt"], "time": time.time()}
        if deferred:
            event["deferred_at_step"] = deferred["step"]
        if streak:
            event["nonfinite_run"] = streak
            self.log(f"note: the run ends inside {streak} non-finite step(s) in a row; the final checkpoint keeps "
                     f"their count (its weights are those of the last step taken)")
        runs.append_log(self.dir / "log.jsonl", event)
        self.last_checkpoint = time.time()
        return written[0] if snapshot else "checkpoint.pt"

    def _defer(self, snapshot: bool, streak: int) -> None:
        t = self.trainer
        first = self.deferred or {"step": t.batch_idx, "snapshot": False}
        self.deferred = {"step": first["step"], "snapshot": first["snapshot"] or snapshot}
        if self.is_main:
            self.log(f"checkpoint deferred at kimg {t.cur_nimg / 1000:.3f}: {streak} non-finite step(s) in a row")
            runs.append_log(self.dir / "log.jsonl", {"event": "checkpoint_deferred", "kimg": t.cur_nimg / 1000,
                                                     "step": t.batch_idx, "streak": streak, "snapshot": snapshot,
                                                     "time": time.time()})

    def write_deferred(self) -> None:
        """Make a deferred checkpoint write as soon as the non-finite streak is over (called after every step
        while one is pending; reads the device)."""
        if self.deferred is None or self.trainer.guard.streak():
            return
        self.trainer.check_nonfinite()                # a phase that reached max_nonfinite, or NaN weights, stop here
        self.save_checkpoints(snapshot=False)

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
    if cfg.masks:
        log(config_lib.describe_masks(cfg))
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
              "pl_mean": t.pl_mean.item(), "ada_p": t.ada_p, "nonfinite_skipped": int(t.guard.total),
              "peak_mem_gb": round(monitor.peak_memory_gb(t.device), 3), "time": time.time()}
    if cfg.masks and cfg.mask_blur_kimg > 0:
        record["mask_sigma"] = t.mask_sigma()
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
        written = run.save_checkpoints(snapshot=snapshot and images > 0, final=done)
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
                run.save_checkpoints(snapshot=False, final=True)
                name = "SIGINT" if stop.signal == signal.SIGINT else "SIGTERM"
                run.log(f"{name}: checkpoint saved at kimg {t.cur_nimg / 1000:.1f}; continue with "
                        f"python train.py --resume {run.dir}")
                raise SystemExit(130 if stop.signal == signal.SIGINT else 143)
            run.write_deferred()


# ----------------------------------------------------------------------------------------------
# main

def load_data(cfg, rank: int, local_rank: int, world_size: int, device, log):
    """The training images, read in turns (distributed.in_turns): rank 0 builds the demo data and the decode
    cache first; then the first process of every other node, which finds them on a shared file system or
    builds its node's own; then the rest read what is there."""
    def read():
        data_path = cfg.data
        if not data_path:
            data_path = str(demo.ensure_demo(log=log)) if local_rank == 0 else str(demo.DEFAULT_DATA)
        return dataset.ImageDataset(data_path, split=cfg.split, resolution=cfg.resolution,
                                    img_channels=cfg.img_channels, fit=cfg.fit, mirror=cfg.mirror,
                                    skip_bad=cfg.skip_bad, with_masks=cfg.masks, cache_dir=cfg.cache_dir or None,
                                    log=log, cond=cfg.cond)
    return distributed.in_turns(read, rank, local_rank, world_size, device)


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
        log(transfer.recipe_line(cfg, given if given is not None else {}))
    cfg = config_lib.fit_masks_group(cfg, given if given is not None else {}, world_size)
    config_lib.validate(cfg, world_size)
    if cfg.dry_run:
        G, D = runs.build_networks(cfg)
        if is_main:
            print(cfg.to_json())
            print(f"G {count_params(G):,} parameters, D {count_params(D):,} parameters, num_ws {G.num_ws}, "
                  f"{world_size} process(es), {cfg.batch // world_size} images per process, device {device}")
            print(cfg.auto_rule_line())
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

    data = load_data(cfg, rank, local_rank, world_size, device, log)
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
    except TrainingStopped as e:                                     # only rank 0 reads the run folder
        where = runs.last_checkpoint(run.dir) if is_main else "process 0 names the last good checkpoint"
        raise TrainingStopped(f"{e}; {where}") from None
    finally:
        if run.board is not None:
            run.board.close()
        if run.lock is not None:
            run.lock.release()
    if world_size > 1:      # leave together: a rank that closed gloo while rank 0 still wrote its last files aborted
        dist.barrier()
    return run.dir


def main(argv=None) -> int:
    """Exit codes: 0 done, 1 the run stopped or an input is bad (one line), 2 a usage error (one line),
    130 / 143 stopped by SIGINT / SIGTERM with a checkpoint saved."""
    return errors.run_main(_main, argv, cleanup=_close_process_group)


def _main(argv: list) -> None:
    if "--help" in argv or "-h" in argv:
        print(config_lib.help_text())
        return
    train(config_lib.parse_args(argv), config_lib.parse_given(argv))


def _close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
