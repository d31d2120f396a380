"""What a training run reports about itself while it trains: the quality of G_ema at snapshots, the best
snapshot so far, and TensorBoard logs.

Owns the image grids of fixed latents (fakes*.png), losses.png and the peak-memory reading, QualityTracker
(a fixed sample of G_ema, scored by scoring.py against the training slices and their held-out split, as
`predict.py score` scores), the best-snapshot rule and its file (best.json, read by `predict.py --best`),
metrics.png, and the optional TensorBoard writer. Does not own the scores (scoring.py) or their mathematics
(metrics.py), the loop (train.py) or how files are written (runs.py).
"""

import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import torch

import config as config_lib
import dataset
import metrics
import runs
import scoring
import segment

DIVERSITY_PAIRS = 200                   # random generated pairs for the diversity SSIM at each scoring
SAMPLE_SEED_OFFSET = 777                # the scored latents come from --seed + this (the training RNG is untouched)
METRIC_PANELS = [("nearest-real SSIM (generated vs held-out real)", ["nearest_ssim", "heldout_nearest_ssim"]),
                 ("diversity SSIM of pairs (generated vs real)", ["diversity_ssim", "real_diversity_ssim"]),
                 ("memorization share; axial levels covered, spread", ["memorization_share", "level_coverage",
                                                                     "real_level_coverage", "level_spread"]),
                 ("quality gap (lower is better) / KID", ["quality_gap", "kid"])]
MASK_PANEL = ("masks: CSF share of brain, CSF on the brain's rim", ["csf_share", "real_csf_share", "csf_rim_share",
                                                                   "real_csf_rim_share"])
# log.jsonl's name of each tracked score: its name in scoring.Scorer's scores
TRACKED = {"nearest_ssim": "nearest_ssim_mean", "heldout_nearest_ssim": "heldout_nearest_ssim_mean",
           "diversity_ssim": "diversity_ssim", "real_diversity_ssim": "real_diversity_ssim",
           "memorization_share": "memorization_share", "quality_gap": "quality_gap", "kid": "kid", "fid": "fid",
           "nearest_ssim_level_mean": "nearest_ssim_level_mean",
           "heldout_nearest_ssim_level_mean": "heldout_nearest_ssim_level_mean",
           "level_coverage": "level_coverage", "level_spread": "level_spread",
           "real_level_coverage": "real_level_coverage", "real_level_spread": "real_level_spread"}


def grid_latents(cfg: config_lib.TrainConfig, data, device):
    """Fixed (z, labels or None) for fakes*.png, from their own generators (the training RNG is not touched).
    With slice-position labels the columns sweep the data's positions from lowest to highest; other labels are
    those of fixed training images."""
    cols, rows = cfg.grid_size()
    gen = torch.Generator().manual_seed(cfg.seed + 123)
    z = torch.randn(cols * rows, cfg.z_dim, generator=gen).to(device)
    if not cfg.c_dim:
        return z, None
    if cfg.label_names == "slice_position":                      # from the lowest to the highest trained position
        lo, hi = (0.0, 1.0) if data is None else (float(data.labels.min()), float(data.labels.max()))
        c = torch.linspace(lo, hi, cols).repeat(rows)[:, None]                   # [cols * rows, 1]
    else:
        c = data.label_batch(np.random.default_rng(cfg.seed).integers(len(data), size=cols * rows))
    return z, c.to(device)


@torch.no_grad()
def save_fakes(G, cfg: config_lib.TrainConfig, latents, path, batch: int = 16):
    """fakes*.png: G's images of fixed latents (with masks: image and mask side by side). Returns the grid
    (uint8 [H, W] or [H, W, 3])."""
    z, c = latents
    cs = c.split(batch) if c is not None else [None] * len(z.split(batch))
    x = torch.cat([G(zb, cb, noise_mode="const") for zb, cb in zip(z.split(batch), cs)])
    labels = dataset.mask_labels(x[:, cfg.img_channels:]) if cfg.masks else None
    grid = runs.tile(dataset.pair_tiles(dataset.to_uint8(x[:, :cfg.img_channels]), labels).cpu(), cfg.grid_size()[0])
    runs.save_png(grid, path)
    return grid


LOSS_PANELS = [("losses", ["loss_G", "loss_D"]), ("D output on reals", ["D_real"]),
               ("penalties", ["r1_penalty", "pl_penalty"]), ("augmentation p", ["ada_p"])]


def plot_losses(log_path, out) -> None:
    runs.plot_log(log_path, out, LOSS_PANELS)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20           # kB on Linux


class QualityTracker:
    """Scores of G_ema at snapshots. The real side (held-out nearest SSIM, real pair diversity, Inception
    features of the reference) is computed once per run; each call generates the same latents again."""

    def __init__(self, cfg: config_lib.TrainConfig, data, device: torch.device, log=print):
        """data: the training ImageDataset (its folder gives the real sets; its labels, for a conditional G,
        the labels the sample is generated with)."""
        self.cfg, self.device, self.log = cfg, device, log
        real = dataset.reference_sets(data.source.root, cfg.resolution, cfg.img_channels, cfg.fit,
                                      cfg.metrics_real or None, cfg.skip_bad, log=lambda m: None, option="--data")
        gen = torch.Generator().manual_seed(cfg.seed + SAMPLE_SEED_OFFSET)
        self.z = torch.randn(cfg.metrics_num, cfg.z_dim, generator=gen)                # [num, z_dim]
        self.c = None
        if cfg.c_dim:                                            # labels of random training images
            self.c = data.label_batch(torch.randint(len(data), (cfg.metrics_num,), generator=gen).numpy())
        try:
            inception = metrics.load_inception(cfg.inception, device) if cfg.inception else None
        except ValueError as e:
            raise config_lib.ConfigError(str(e)) from None
        self.scorer = scoring.Scorer(real, device, inception, batch=max(cfg.batch, 16), pairs=DIVERSITY_PAIRS,
                                     ms_ssim=False)
        self.segmenter = load_segmenter(cfg.agreement_segmenter, device) if cfg.agreement_segmenter else None
        self.real_mask_shape = {}                # the training masks' shape, logged beside the generated ones'
        if cfg.masks and getattr(data, "masks", None) is not None:
            self.real_mask_shape = {f"real_{k}": v for k, v in metrics.mask_shape(torch.from_numpy(data.masks)).items()}

    def due(self, tick: int, snapshot: bool) -> bool:
        every = self.cfg.metrics_every
        return snapshot or (every > 0 and tick % every == 0)

    @torch.no_grad()
    def score(self, G) -> dict:
        """{score name: value} for G (its image channels), plus metrics_seconds, the time it took."""
        start = time.time()
        c, batch = self.cfg.img_channels, max(self.cfg.batch, 16)
        cs = self.c.split(batch) if self.c is not None else [None] * len(self.z.split(batch))
        # Each sample with its own per-pixel noise (noise_mode="random"), as G's distribution is and as the
        # official metrics sample it; the same noise at every scoring (a fixed seed, the training RNG untouched).
        # With one shared noise map ("const") the samples share its texture, which inflates pair SSIM.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed + SAMPLE_SEED_OFFSET)
            x = torch.cat([G(zb.to(self.device), None if cb is None else cb.to(self.device), noise_mode="random")
                           for zb, cb in zip(self.z.split(batch), cs)])
        images = dataset.to_uint8(x[:, :c]).cpu()                                      # [num, C, R, R] uint8
        s = self.scorer(images)
        out = {short: s[name] for short, name in TRACKED.items() if name in s}
        if self.cfg.masks:
            shape = metrics.mask_shape(dataset.mask_labels(x[:, c:]).cpu())
            out.update({k: v for k, v in shape.items() if math.isfinite(v)})     # no CSF: no rim share (not NaN)
            out.update(self.real_mask_shape)
        if self.segmenter is not None:          # the real-trained segmenter's masks against the generated ones
            dice = segment.dice_scores(segment.segment(self.segmenter, images, device=self.device),
                                       dataset.mask_labels(x[:, c:]).cpu())
            out.update({f"agreement_{k}": v for k, v in dice.items()})
        out["metrics_seconds"] = round(time.time() - start, 3)
        return out


def load_segmenter(path, device) -> "segment.UNet":
    """The U-Net of a segmenter.pt (segment.py train) for the agreement Dice, or one line naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = segment.UNet()
        model.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:
        raise config_lib.ConfigError(f"--agreement_segmenter {path}: not a segmenter.pt of segment.py train "
                                     f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    return model.to(device).eval()


def criterion(record: dict):
    """(name, value) that ranks snapshots, lower is better: KID when Inception features are there, else
    the quality gap; None when the record was not scored."""
    for name in ("kid", "quality_gap"):
        if name in record and math.isfinite(record[name]):
            return name, record[name]
    return None


def update_best(run_dir, record: dict, snapshot: str) -> bool:
    """Record snapshot in best.json when its score beats the best so far (or none is recorded). Returns
    whether it did."""
    scored = criterion(record)
    if scored is None:
        return False
    name, value = scored
    best = runs.read_best(run_dir)
    if best is not None and best.get("criterion") == name and best.get("value", math.inf) <= value:
        return False
    keep = {k: record[k] for k in ("kimg", "tick", "step") if k in record}
    scores = {k: record[k] for k in ("nearest_ssim", "heldout_nearest_ssim", "diversity_ssim", "real_diversity_ssim",
                                     "memorization_share", "quality_gap", "kid", "fid") if k in record}
    runs.write_text(Path(run_dir) / runs.BEST_NAME,
                    json.dumps({"snapshot": snapshot, "criterion": name, "value": value, **keep, "scores": scores},
                               indent=1) + "\n")
    return True


def plot_metrics(log_path, out) -> None:
    records = runs.read_log(log_path)
    if any("quality_gap" in r for r in records):
        masked = any("csf_share" in r for r in records)
        runs.plot_log(log_path, out, METRIC_PANELS + [MASK_PANEL] * masked)


class TensorBoard:
    """Every scalar of log.jsonl and the image grids at snapshots, when the tensorboard package is installed
    (an optional extra, imported here and nowhere else); without it every call does nothing. Being optional,
    it never stops a run: a folder that cannot be opened (a file in its place, no permission) or a write
    that fails later (a full disk) turns it off with one warning, and the run goes on without it."""

    def __init__(self, run_dir, enabled: bool = True, log=print):
        self.writer, self.log = None, log
        self.folder = Path(run_dir) / "tensorboard"
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:                                    # the optional extra is absent: nothing changes
            return
        self._thread_hook, threading.excepthook = threading.excepthook, self._quiet_writer_thread
        try:
            self.writer = SummaryWriter(log_dir=str(self.folder))
        except Exception as e:                                 # whatever it raises, the run goes on
            self._turn_off(e)
            return
        log(f"TensorBoard logs in {self.folder} (tensorboard --logdir {run_dir})")

    def _quiet_writer_thread(self, args) -> None:
        """threading.excepthook while the writer is open: an error of its writing thread is not printed there
        (the writer raises it again in the next call, which turns TensorBoard off with one warning); every other
        thread's error goes to the hook as before."""
        if type(args.thread).__name__ != "_AsyncWriterThread":
            self._thread_hook(args)

    def _turn_off(self, e: Exception) -> None:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        self.log(f"warning: TensorBoard turned off, {self.folder} cannot be written ({reason}); training goes on "
                 f"without it")
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:                                  # it failed already; said once above
                pass
        self._restore_thread_hook()

    def _write(self, write) -> None:
        """write(writer), unless turned off; a failure turns it off (the writer's thread re-raises its errors
        in the next call)."""
        if self.writer is None:
            return
        try:
            write(self.writer)
        except Exception as e:                                 # whatever it raises, the run goes on
            self._turn_off(e)

    def scalars(self, record: dict) -> None:
        step = int(round(record["kimg"] * 1000))
        values = {k: v for k, v in record.items()
                  if k not in ("tick", "kimg", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}

        def write(writer):
            for key, value in values.items():
                writer.add_scalar(key, value, step)
            writer.flush()
        self._write(write)

    def image(self, tag: str, grid, kimg: float) -> None:
        """grid: uint8 [H, W] or [H, W, 3] as runs.tile makes it."""
        def write(writer):
            writer.add_image(tag, grid, int(round(kimg * 1000)), dataformats="HW" if grid.ndim == 2 else "HWC")
            writer.flush()
        self._write(write)

    def close(self) -> None:
        self._write(lambda writer: writer.close())
        self.writer = None
        self._restore_thread_hook()

    def _restore_thread_hook(self) -> None:
        if threading.excepthook == self._quiet_writer_thread:
            threading.excepthook = self._thread_hook
