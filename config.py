"""Every training hyperparameter, in one typed dataclass with named presets and a strict command line.

Owns: the TrainConfig fields (each with its comment, which `--help` prints), the presets, parsing of
`--key=value` / `--key value` / `--preset NAME`, and the checks that reject impossible settings with one
line. Also owns the command-line style every program shares: options spelled with underscores (hyphens are
accepted as aliases), one-line usage errors with exit code 2 (`Parser`), and the device rule
(`resolve_device`). Does not own what the settings do (train.py, trainer.py, dataset.py, modules.py).

    python train.py --preset oasis256 --data /path/to/oasis --batch=32
"""

import argparse
import dataclasses
import difflib
import io
import json
import math
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import errors


@dataclass
class TrainConfig:
    # Run
    preset: str = "demo"                # named starting point: demo | oasis256 | paper256
    data: str = ""                      # OASIS folder (with keras_png_slices_*) or image folder; "" = demo data
    split: str = "train"                # OASIS split to train on
    outdir: str = "runs"                # parent of the numbered run folders
    resume: str = ""                    # checkpoint file or run folder to continue exactly
    init_from: str = ""                 # transfer learning: start a new run from this checkpoint's G, D and G_ema
                                        # weights (a run folder, a checkpoint or a convert.py output)
    seed: int = 0                       # seeds the networks' initial weights and the data order; process k of n
                                        # draws its latents, noise and augmentations from seed * n + k
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    kimg: float = 60.0                  # training length in thousands of real images shown to D (demo preset: 100 with --masks)
    tick_kimg: float = 2.0              # progress is logged, plotted and checkpointed per tick of this many kimg
    snap: int = 5                       # ticks between snapshots and image grids (0 = only at the end)
    checkpoint_minutes: float = 10.0    # also rewrite checkpoint.pt at the first tick this long after the last
    dry_run: bool = False               # print the resolved config and parameter counts, then exit
    # Data
    resolution: int = 64                # training resolution (power of two); images are resized to it
    img_channels: int = 1               # 1 = grayscale MRI, 3 = RGB
    mirror: bool = True                 # add left-right flipped copies of the training images
    fit: str = "crop"                   # non-square images: crop (centre) or pad (zeros)
    skip_bad: bool = False              # skip unreadable images with a warning instead of stopping
    masks: bool = False                 # image + tissue-mask pairs: G also outputs the OASIS mask, D judges the pair
    mask_encoding: str = "level"        # how G outputs the mask and D reads it: level (one channel holding the
                                        # class level, snapped when written) | onehot (4 class channels, hard with
                                        # the softmax gradient; runs before this default, docs/masks.md) | split
                                        # (2 channels: brain or background, and the tissue level) | split_dark
                                        # (split with background at CSF's end of the tissue level, as in T1) |
                                        # softmax (4 class channels holding the softmax's probabilities, the most
                                        # likely class when written: a soft edge never passes through CSF)
    mask_head: str = "skip"             # with --masks: which of G's ToRGB layers output the mask: skip (every
                                        # resolution's, summed like the image) | top (the last block's only, a
                                        # read-out of the full-resolution features; docs/masks.md)
    mask_blur: float = 1.0              # with --masks: sigma (pixels) of a Gaussian blur on the mask channels D
                                        # sees, real and fake alike, so hard edges are no cue (0 = off)
    mask_blur_kimg: float = 0.0         # with --mask_blur: the sigma falls linearly to 0 over this many kimg, as
                                        # StyleGAN3's blur schedule does (0 = it stays)
    mask_gain: float = 1.0              # with --masks: factor on the mask channels D sees, real and fake alike
                                        # (< 1 gives the mask less weight in D's first layer than the image)
    mask_snap: bool = False             # with --masks (level): D sees every mask snapped to the nearest class level
                                        # before ADA and the blur, the gradient passed straight through
    mask_mismatch: float = 0.0          # with --masks: weight of D's term calling real images with moved masks fake
                                        # (each mask moved 1-2 pixels, so D checks that mask edges fit the image's;
                                        # a matching-aware D, Reed et al. 2016; 0 = off)
    mask_consistency: float = 0.0       # with --masks: weight of G's term asking each generated pair to agree under a
                                        # segmenter trained on the real pairs during the run (consistency.py; 0 = off;
                                        # a new --masks run defaults to MASKS_CONSISTENCY)
    consistency_image: bool = True      # with --mask_consistency: the image is pulled towards its mask as well as the
                                        # mask towards the segmenter's reading of the image (false: the mask only)
    consistency_rim: bool = True        # with --mask_consistency: the image's term includes the mask's CSF pixels next
                                        # to background (false: they are left out, so the ring of CSF that snapping
                                        # draws at a soft brain outline is not taught to the image; the default of a
                                        # new run with --mask_consistency and level masks)
    consistency_mask_weight: float = 1.0    # with --mask_consistency: factor on the mask's term against the image's
                                        # (the mask's squared distance from the segmenter's reading; 1 = equal; a
                                        # new run with --mask_consistency defaults to MASKS_MASK_WEIGHT)
    consistency_brain: bool = False     # with --mask_consistency: each sample's term is weighted by the batch's mean
                                        # brain share over its own, so a small slice's term is no cheaper than a
                                        # large one's (consistency.brain_weights; false = each term over the image)
    r1_mask: bool = True                # with --masks: R1 also penalizes D's gradient on the mask channels
                                        # (false = on the image channels only)
    cond: str = "none"                  # conditional training: none | slice (axial position from OASIS names) | json
    c_dim: int = 0                      # label width, set from the data when a run starts (stored in checkpoints)
    label_names: str = ""               # what the label values mean, comma-separated (set from the data)
    label_encoding: str = "auto"        # what the label embedding reads: none (the label, official) | fourier
                                        # (sin/cos features; continuous labels) | auto (fourier unless classes)
    label_range: str = ""               # lo:hi per label, comma-separated, mapped to [0, 1] before the fourier
                                        # features; set from the data for labels outside [0, 1]; "" = as given
    cache_dir: str = ""                 # decoded-image cache; "" = <data>/.cache
    # Networks
    z_dim: int = 512                    # latent z width
    w_dim: int = 512                    # intermediate latent w width
    mapping_layers: int = 2             # G's mapping-network depth (8 in the paper, 2 in the official auto config)
    d_mapping_layers: int = 8           # depth of D's label mapping (conditional runs); the official code keeps 8
    channel_base: int = 2048            # channels at resolution r = min(channel_base // r, channel_max)
    channel_max: int = 64               # upper bound on channels per layer
    mbstd_group: int = 4                # minibatch-stddev group size
    # Optimisation
    batch: int = 16                     # total batch over all GPUs
    lr: float = 0.0025                  # Adam learning rate of G and D (before the lazy-regularization correction)
    betas: str = "0,0.99"               # Adam beta1,beta2 (before the lazy-regularization correction)
    r1_gamma: float = 0.0               # R1 weight; 0 = the auto rule 0.0002 * resolution^2 / batch
    r1_interval: int = 16               # D steps between lazy R1 penalties
    pl_weight: float = 2.0              # path-length regularization weight
    pl_interval: int = 4                # G steps between lazy path-length penalties
    pl_batch_shrink: int = 2            # path-length batch = batch / this
    pl_decay: float = 0.01              # decay of the running mean path length
    style_mixing: float = 0.9           # probability of mixing two latents at a random crossover
    noise: bool = True                  # G's per-pixel noise inputs while training (StyleGAN2); false trains
                                        # without them (their strengths stay 0), a deviation (docs/results.md)
    ema_kimg: float = 0.0               # G EMA half-life in kimg; 0 = the auto rule batch * 10 / 32
    ema_rampup: float = 0.05            # EMA half-life limited to cur_kimg * this (0 = no ramp-up)
    mixed_precision: str = "auto"       # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    conv_clamp: float = 256.0           # activation clamp used with bf16
    channels_last: bool = True          # NHWC memory layout for G, D and images (faster convolutions)
    max_nonfinite: int = 10             # non-finite steps in a row before the run stops
    compile: bool = False               # torch.compile G and D for the first-order D and G steps (R1, path length
                                        # stay eager: they need double backward)
    freeze_d: int = 0                   # Freeze-D: D's first N layers (from the highest resolution) are not trained
    # Augmentation (augment.py)
    aug: str = "ada"                    # ada (p adapts) | fixed (p stays) | noaug; a new --masks run defaults to
                                        # noaug (ADA cost the masked demo runs image quality, docs/masks.md)
    aug_pipe: str = "bgc"               # transform groups: b blit, g geometry, c colour, f filter, n noise, o cutout
    p: float = 0.0                      # augmentation probability (the starting value for ada)
    ada_target: float = 0.6             # ADA target for E[sign(D(real))]
    ada_interval: int = 4               # D steps between ADA updates
    ada_kimg: float = 500.0             # images (in kimg) for p to move from 0 to 1
    # Quality tracked while training (metrics.py scores of G_ema against the training data)
    metrics_num: int = 256              # generated slices scored at every snapshot (0 = no scoring)
    metrics_every: int = 0              # also score every this many ticks (0 = at snapshots only)
    metrics_real: int = 2000            # training slices they are compared with (a seeded random subset; 0 = all)
    agreement_segmenter: str = ""       # masked runs: a segmenter.pt (segment.py train) to score the agreement
                                        # Dice of the generated pairs at every scoring
    inception: str = ""                 # TorchScript Inception-v3 (inception-2015-12-05.pt) to add KID and FID
    tensorboard: bool = True            # also write TensorBoard logs when the tensorboard package is installed
    # Outputs
    grid: str = "8x4"                   # image grid columns x rows for reals.png / fakes*.png

    def resolved_r1_gamma(self) -> float:
        """The auto rule gamma = 0.0002 * r^2 / batch (the official StyleGAN2-ADA code, cfg auto), with the
        batch given here; the official code uses its own auto batch even when --batch is given (a deviation
        named in docs/design.md)."""
        return self.r1_gamma if self.r1_gamma > 0 else 0.0002 * self.resolution ** 2 / self.batch

    def resolved_ema_kimg(self) -> float:
        """The auto rule ema_kimg = batch * 10 / 32, with the batch given here (as resolved_r1_gamma)."""
        return self.ema_kimg if self.ema_kimg > 0 else self.batch * 10 / 32

    def auto_rule_line(self) -> str:
        """The resolved R1 weight and EMA half-life, and what each came from (for --dry_run and the log)."""
        gamma = "given" if self.r1_gamma > 0 else f"auto rule from batch {self.batch}"
        ema = "given" if self.ema_kimg > 0 else f"auto rule from batch {self.batch}"
        return (f"r1_gamma {self.resolved_r1_gamma():.4g} ({gamma}), ema_kimg {self.resolved_ema_kimg():.4g} ({ema}), "
                f"ema_rampup {self.ema_rampup:g}")

    def adam_betas(self):
        return tuple(float(b) for b in self.betas.split(","))

    def grid_size(self):
        cols, rows = (int(v) for v in self.grid.lower().split("x"))
        return cols, rows

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


PRESETS = {
    # Trains on the built-in demo data on a CPU (64 px, small networks, 60 kimg).
    # Runs of this size pass through a low-variety phase up to about 20-30 kimg (docs/results.md), so the
    # preset runs 60 kimg; R1 weight 1 and ADA's 100-kimg speed are the settings that run was measured with.
    "demo": dict(resolution=64, channel_base=2048, channel_max=64, mapping_layers=2, batch=16, mbstd_group=4,
                 kimg=60, tick_kimg=2, snap=5, r1_gamma=1.0, ada_kimg=100.0, ema_kimg=0.0, ema_rampup=0.05,
                 mirror=True, grid="8x4"),
    # The official "auto" configuration for 256 px on one GPU (the official StyleGAN2-ADA code): fmaps 0.5,
    # batch 16, gamma 0.8192, ema 5 kimg with ramp-up 0.05, 2 mapping layers.
    "oasis256": dict(resolution=256, channel_base=16384, channel_max=512, mapping_layers=2, batch=16, mbstd_group=4,
                     lr=0.0025, r1_gamma=0.0, ema_kimg=0.0, ema_rampup=0.05, kimg=25000, tick_kimg=4, snap=50,
                     mirror=True, grid="8x4"),
    # The paper's 256 px configuration (StyleGAN2-ADA "paper256").
    "paper256": dict(resolution=256, channel_base=16384, channel_max=512, mapping_layers=8, batch=64, mbstd_group=8,
                     lr=0.0025, r1_gamma=1.0, ema_kimg=20.0, ema_rampup=0.0, kimg=25000, tick_kimg=4, snap=50,
                     mirror=True, grid="8x4"),
}


MASKS_AUG = "noaug"     # --aug of a new --masks run unless given: ADA's p rose on every masked run and cost image
                        # quality; without it D's output on reals stayed below 1 (docs/results.md)
MASKS_CONSISTENCY = 1.0     # --mask_consistency of a new --masks run unless given, with the image's term left off
                            # the CSF rim (--consistency_rim=false) for level masks: at 60 kimg on the demo data
                            # its images reached the image-only run's and its pairs trained the best segmenter
                            # (docs/results.md, row (r))

MASKS_MASK_WEIGHT = 8.0     # --consistency_mask_weight of a new run with --mask_consistency unless given: where the
                            # CSF ring lies, D pulled on the mask about 8 times as hard as the mask's term at factor
                            # 1; at 8 the masks agreed more with their images at 60 kimg (docs/results.md, row (t))

MASKS_DEMO_KIMG = 100.0     # --kimg of a new --masks run on the demo preset unless given: at 60 kimg, the image-only
                            # run's length, no masked setting reached agreement 0.80 and every axial level on two
                            # seeds; at 100 kimg the default did on every seed trained that far (docs/results.md)

MASKS_MBSTD_GROUP = 8       # --mbstd_group of a new --masks run unless given, where it divides the images per GPU
                            # (fit_masks_group): with groups of 4 the masked runs over-drew the low slices; over 8
                            # samples they spread (all 32 axial levels at 100 kimg; docs/results.md, row (v))


class ConfigError(errors.UsageError):
    """An option the user gave that cannot work, as one line."""


def field_comments() -> dict:
    """{field name: its trailing comment in this file}, for --help."""
    source = open(__file__, encoding="utf-8").read()
    comments, in_class = {}, False
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        line = tok.line
        if line.startswith("class TrainConfig"):
            in_class = True
        elif in_class and line.startswith("    def "):
            break
        if in_class and tok.type == tokenize.COMMENT and not line.lstrip().startswith("#"):
            m = re.match(r"\s+(\w+):", line)
            if m:
                comments[m.group(1)] = tok.string.lstrip("# ").strip()
    return comments


def help_text() -> str:
    comments = field_comments()
    lines = ["usage: python train.py [--preset NAME] [--key=value | --key value] ...", "",
             f"presets: {', '.join(PRESETS)} (default demo); a preset sets some keys, your options override it.", "",
             "options (values of the demo preset):"]
    demo = TrainConfig(**PRESETS["demo"])
    for f in dataclasses.fields(TrainConfig):
        default = getattr(demo, f.name)
        shown = repr(default) if isinstance(default, str) else str(default)
        lines.append(f"  --{f.name:<20} {_type_name(f.type):<6} {shown:<12} {comments.get(f.name, '')}")
    return "\n".join(lines)


def _type_name(t) -> str:
    return getattr(t, "__name__", str(t))


def _convert(name: str, kind, text: str):
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{name} expects true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"--{name} expects {'an integer' if kind is int else 'a number' if kind is float else kind.__name__}"
                          f", got {text!r}") from None


def parse_args(argv) -> TrainConfig:
    """argv (without the program name) -> a validated TrainConfig. Raises ConfigError (one line)."""
    given = parse_given(argv)
    preset = given.get("preset", "demo")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = dataclasses.replace(TrainConfig(**dict(PRESETS[preset], preset=preset)), **given)
    if cfg.masks and "aug" not in given:                    # measured on the masked demo runs, docs/results.md
        cfg.aug = MASKS_AUG
    if cfg.masks and "mask_consistency" not in given:
        cfg.mask_consistency = MASKS_CONSISTENCY
    if (cfg.mask_consistency and cfg.consistency_image and cfg.mask_encoding == "level"
            and "consistency_rim" not in given):
        cfg.consistency_rim = False
    if cfg.mask_consistency and "consistency_mask_weight" not in given:
        cfg.consistency_mask_weight = MASKS_MASK_WEIGHT
    if cfg.masks and preset == "demo" and "kimg" not in given:
        cfg.kimg = MASKS_DEMO_KIMG
    if cfg.masks and "mbstd_group" not in given:
        cfg.mbstd_group = max(cfg.mbstd_group, MASKS_MBSTD_GROUP)
        cfg = fit_masks_group(cfg, given, world_size=1)     # train.py fits it again once the GPUs are known
    for f in dataclasses.fields(cfg):                       # presets write 40 where a float is meant
        if f.type is float:
            setattr(cfg, f.name, float(getattr(cfg, f.name)))
    if cfg.resume:              # checked on top of the checkpoint's config (resume_config): --resume RUN
        return cfg              # --mask_consistency 1 needs no --masks there, the run has its masks
    validate(cfg)
    if "mask_head" in given and not cfg.masks:
        raise ConfigError(f"--mask_head {cfg.mask_head} places G's mask output; it needs --masks")
    return cfg


def parse_given(argv) -> dict:
    """The options given on the command line, typed: {key: value}. Raises ConfigError (one line)."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    given, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; options look like --key=value (see --help)")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in types:
            close = difflib.get_close_matches(key, list(types), n=3)
            hint = f" (did you mean {', '.join('--' + c for c in close[:3])}?)" if close else ""
            raise ConfigError(f"unknown option --{key}{hint}; see --help for the list")
        if not eq:
            if types[key] is bool and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
                value = "true"
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise ConfigError(f"--{key} needs a value")
        given[key] = _convert(key, types[key], value)
        i += 1
    return given


ARCHITECTURE_KEYS = ("resolution", "img_channels", "z_dim", "w_dim", "mapping_layers", "d_mapping_layers",
                     "channel_base", "channel_max", "masks", "mask_encoding", "mask_head", "cond", "c_dim",
                     "label_encoding", "label_range")
MASK_CLASSES = 4                        # OASIS tissue masks: background, CSF, grey matter, white matter
MASK_ENCODINGS = ("onehot", "level", "split", "split_dark", "softmax")
CLASS_ENCODINGS = ("onehot", "softmax")     # one mask channel per class (hard one-hot, or the softmax's probabilities)
SPLIT_ENCODINGS = ("split", "split_dark")   # two mask channels: brain occupancy, then the tissue level
MASK_HEADS = ("skip", "top")            # G's ToRGBs that output the mask: all resolutions, or the last only


def mask_channels(cfg: TrainConfig) -> int:
    """Channels the mask takes after the image in G's output and D's input: 0 without --masks, 4 one-hot
    class channels, 1 level channel, or 2 (split, split_dark: brain occupancy and tissue level)."""
    if not cfg.masks:
        return 0
    if cfg.mask_encoding in SPLIT_ENCODINGS:
        return 2
    return MASK_CLASSES if cfg.mask_encoding in CLASS_ENCODINGS else 1


CONSISTENCY_KEYS = ("consistency_image", "consistency_rim", "consistency_mask_weight",     # shape its term
                    "consistency_brain")


def resume_config(saved: dict, given: dict) -> TrainConfig:
    """The config of a resumed run: the checkpoint's, with the options given now on top. Options that
    would change the networks' shapes are refused."""
    cfg = from_dict(saved)
    changed = [k for k in ARCHITECTURE_KEYS if k in given and given[k] != getattr(cfg, k)]
    if changed:
        raise ConfigError(f"--{changed[0]} cannot change when resuming (the checkpoint has "
                          f"{changed[0]}={getattr(cfg, changed[0])}); start a new run instead")
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if k != "preset"})
    if not cfg.mask_consistency:                # the term turned off on resuming: its shaping options go with it
        for key in CONSISTENCY_KEYS:
            if key not in given:
                setattr(cfg, key, getattr(TrainConfig, key))
    validate(cfg)
    return cfg


def check_resolution(resolution, option: str = "--resolution", error=None) -> int:
    """The project's one power-of-two check: return log2(resolution), or raise `error` (ConfigError by
    default) naming the option and the values that work."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8 or resolution & (resolution - 1):
        raise (error or ConfigError)(f"{option} must be a power of two >= 8 (e.g. 64, 128, 256), got {resolution!r}")
    return int(math.log2(resolution))


def fit_masks_group(cfg: TrainConfig, given: dict, world_size: int) -> TrainConfig:
    """A new --masks run's default group of 8 (MASKS_MBSTD_GROUP) falls back to the preset's where it does not
    divide the images per GPU (a batch of 12, or 24 over 2 GPUs); a group the user gave is kept."""
    batch_gpu = cfg.batch // world_size
    if (cfg.masks and not cfg.resume and "mbstd_group" not in given and batch_gpu >= 1
            and batch_gpu % min(cfg.mbstd_group, batch_gpu)):
        return dataclasses.replace(cfg, mbstd_group=PRESETS[cfg.preset]["mbstd_group"])
    return cfg


def validate(cfg: TrainConfig, world_size: int = 1) -> None:
    """Reject impossible combinations with one line that names the option."""
    check_resolution(cfg.resolution)
    if cfg.img_channels not in (1, 3):
        raise ConfigError(f"--img_channels must be 1 or 3, got {cfg.img_channels}")
    if cfg.batch < 1 or cfg.batch % world_size:
        raise ConfigError(f"--batch={cfg.batch} must be a positive multiple of the number of GPUs ({world_size})")
    batch_gpu = cfg.batch // world_size
    group = min(cfg.mbstd_group, batch_gpu)
    if cfg.mbstd_group < 1 or batch_gpu % group:
        raise ConfigError(f"--batch={cfg.batch} gives {batch_gpu} images per GPU, which the minibatch-stddev "
                          f"group of {group} (--mbstd_group) does not divide")
    if cfg.pl_weight > 0 and cfg.pl_batch_shrink > 0 and batch_gpu // cfg.pl_batch_shrink < 1:
        raise ConfigError(f"--pl_batch_shrink={cfg.pl_batch_shrink} leaves no images for path-length "
                          f"regularization at {batch_gpu} images per GPU")
    r = cfg.resolution
    if min(cfg.channel_base // r, cfg.channel_max) < 1:
        raise ConfigError(f"--channel_base={cfg.channel_base} gives no channels at {r} px; use >= {r}")
    positive = {"kimg": cfg.kimg, "tick_kimg": cfg.tick_kimg, "lr": cfg.lr, "r1_interval": cfg.r1_interval,
                "pl_interval": cfg.pl_interval, "pl_batch_shrink": cfg.pl_batch_shrink, "z_dim": cfg.z_dim,
                "w_dim": cfg.w_dim, "mapping_layers": cfg.mapping_layers,
                "d_mapping_layers": cfg.d_mapping_layers, "max_nonfinite": cfg.max_nonfinite,
                "ada_interval": cfg.ada_interval, "ada_kimg": cfg.ada_kimg}
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"--{name} must be > 0, got {value}")
    for name, value in {"snap": cfg.snap, "r1_gamma": cfg.r1_gamma, "pl_weight": cfg.pl_weight,
                        "ema_kimg": cfg.ema_kimg, "ema_rampup": cfg.ema_rampup,
                        "checkpoint_minutes": cfg.checkpoint_minutes}.items():
        if value < 0:
            raise ConfigError(f"--{name} must be >= 0, got {value}")
    if not 0 <= cfg.style_mixing <= 1 or not 0 <= cfg.p <= 1:
        raise ConfigError("--style_mixing and --p are probabilities in [0, 1]")
    if cfg.mixed_precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"--mixed_precision must be auto, bf16 or fp32, got {cfg.mixed_precision!r}")
    if cfg.aug not in ("noaug", "ada", "fixed"):
        raise ConfigError(f"--aug must be ada, fixed or noaug, got {cfg.aug!r}")
    if not cfg.aug_pipe or set(cfg.aug_pipe) - set("bgcfno"):
        raise ConfigError(f"--aug_pipe must use the letters b, g, c, f, n, o (e.g. bgc), got {cfg.aug_pipe!r}")
    if cfg.cond not in ("none", "slice", "json"):
        raise ConfigError(f"--cond must be none, slice or json, got {cfg.cond!r}")
    if cfg.label_encoding not in ("auto", "none", "fourier"):
        raise ConfigError(f"--label_encoding must be auto, none or fourier, got {cfg.label_encoding!r}")
    if cfg.label_range and not cfg.c_dim:
        raise ConfigError(f"--label_range is set from the data's labels when a conditional run starts and is stored in "
                          f"its checkpoints; leave it out (got {cfg.label_range!r})")
    try:
        label_ranges(cfg)
    except ValueError:
        raise ConfigError(f"--label_range must be lo:hi with hi > lo for each of the {cfg.c_dim} labels, "
                          f"comma-separated (it is set from the data), got {cfg.label_range!r}") from None
    if cfg.c_dim < 0:
        raise ConfigError(f"--c_dim must be >= 0 (it is set from the data), got {cfg.c_dim}")
    if cfg.fit not in ("crop", "pad"):
        raise ConfigError(f"--fit must be crop or pad, got {cfg.fit!r}")
    try:
        betas = cfg.adam_betas()
    except ValueError:
        betas = ()
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"--betas must be two numbers in [0, 1) like 0,0.99, got {cfg.betas!r}")
    try:
        cols, rows = cfg.grid_size()
    except ValueError:
        cols = rows = 0
    if cols < 1 or rows < 1:
        raise ConfigError(f"--grid must look like 8x4 (columns x rows), got {cfg.grid!r}")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.type is float and not math.isfinite(value):
            raise ConfigError(f"--{f.name} must be a finite number, got {value}")
    for name in ("metrics_num", "metrics_every", "metrics_real"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(cfg, name)}")
    if 0 < cfg.metrics_num < 2:
        raise ConfigError(f"--metrics_num must be 0 (off) or >= 2, got {cfg.metrics_num}")
    if cfg.mask_encoding not in MASK_ENCODINGS:
        raise ConfigError(f"--mask_encoding must be one of {', '.join(MASK_ENCODINGS)}, got {cfg.mask_encoding!r}")
    if cfg.mask_head not in MASK_HEADS:
        raise ConfigError(f"--mask_head must be one of {', '.join(MASK_HEADS)}, got {cfg.mask_head!r}")
    if not (cfg.mask_blur >= 0 and math.isfinite(cfg.mask_blur)):
        raise ConfigError(f"--mask_blur must be a sigma in pixels >= 0, got {cfg.mask_blur}")
    if not (cfg.mask_blur_kimg >= 0 and math.isfinite(cfg.mask_blur_kimg)):
        raise ConfigError(f"--mask_blur_kimg must be a length in kimg >= 0 (0 = the blur stays), got {cfg.mask_blur_kimg}")
    if not cfg.mask_gain > 0:
        raise ConfigError(f"--mask_gain must be a factor > 0, got {cfg.mask_gain}")
    if cfg.mask_snap and not (cfg.masks and cfg.mask_encoding == "level"):
        raise ConfigError("--mask_snap snaps a level mask; it needs --masks with --mask_encoding level")
    if not (cfg.mask_mismatch >= 0 and math.isfinite(cfg.mask_mismatch)):
        raise ConfigError(f"--mask_mismatch must be a weight >= 0 (0 = off), got {cfg.mask_mismatch}")
    if cfg.mask_mismatch and not cfg.masks:
        raise ConfigError("--mask_mismatch scores misregistered image + mask pairs; it needs --masks")
    if not (cfg.mask_consistency >= 0 and math.isfinite(cfg.mask_consistency)):
        raise ConfigError(f"--mask_consistency must be a weight >= 0 (0 = off), got {cfg.mask_consistency}")
    if cfg.mask_consistency and not cfg.masks:
        raise ConfigError("--mask_consistency scores generated image + mask pairs; it needs --masks")
    if not cfg.consistency_image and not cfg.mask_consistency:
        raise ConfigError("--consistency_image=false chooses the terms of --mask_consistency; it needs --mask_consistency W > 0")
    if not (cfg.consistency_mask_weight >= 0 and math.isfinite(cfg.consistency_mask_weight)):
        raise ConfigError(f"--consistency_mask_weight must be a factor >= 0, got {cfg.consistency_mask_weight}")
    if cfg.consistency_mask_weight != 1 and not cfg.mask_consistency:
        raise ConfigError("--consistency_mask_weight weighs the mask's term of --mask_consistency; it needs "
                          "--mask_consistency W > 0")
    if cfg.consistency_brain and not cfg.mask_consistency:
        raise ConfigError("--consistency_brain weighs the term of --mask_consistency by each slice's brain share; "
                          "it needs --mask_consistency W > 0")
    if not cfg.consistency_rim and not (cfg.mask_consistency and cfg.consistency_image):
        raise ConfigError("--consistency_rim=false shapes the image's term of --mask_consistency; it needs "
                          "--mask_consistency W > 0 with the image's term on (--consistency_image)")
    if not cfg.r1_mask and not cfg.masks:
        raise ConfigError("--r1_mask=false leaves the mask channels out of R1; it needs --masks")
    if cfg.agreement_segmenter and not cfg.masks:
        raise ConfigError("--agreement_segmenter scores generated masks; it needs --masks")
    if cfg.agreement_segmenter and not Path(cfg.agreement_segmenter).is_file():
        raise ConfigError(f"--agreement_segmenter {cfg.agreement_segmenter}: no such file; give the segmenter.pt "
                          f"that `segment.py train` writes")
    if cfg.inception and not Path(cfg.inception).is_file():
        raise ConfigError(f"--inception {cfg.inception}: no such file; give inception-2015-12-05.pt or leave it empty")
    if cfg.seed < 0 or cfg.seed >= 2 ** 31:
        raise ConfigError(f"--seed must be in [0, 2^31), got {cfg.seed}")
    if not 0 < cfg.pl_decay <= 1:
        raise ConfigError(f"--pl_decay must be in (0, 1], got {cfg.pl_decay}")
    d_layers = 3 * (int(math.log2(r)) - 2) + 1                      # FromRGB + 3 per block (transfer.d_layers)
    if not 0 <= cfg.freeze_d <= d_layers:
        raise ConfigError(f"--freeze_d={cfg.freeze_d}: this D has {d_layers} layers that can be frozen (0 to {d_layers})")
    if cfg.lr > 1:
        raise ConfigError(f"--lr={cfg.lr} is far above any working Adam rate (0.0025 is the default); use <= 1")
    parse_device(cfg.device)
    if cfg.cache_dir and Path(cfg.cache_dir).exists() and not Path(cfg.cache_dir).is_dir():
        raise ConfigError(f"--cache_dir {cfg.cache_dir}: is a file, not a folder; give a folder (or leave it "
                          f"empty for <data>/.cache)")


def from_dict(values: dict) -> TrainConfig:
    """A TrainConfig from a saved config.json / checkpoint (unknown keys are refused)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"saved config has unknown keys {sorted(unknown)}; was it written by another version?")
    # Configs saved before label_encoding existed fed the label to the embedding as it is; configs saved
    # before d_mapping_layers existed gave D's label mapping G's depth (they load as they were trained).
    # Configs saved before mask_encoding existed generated one-hot masks that D saw unblurred.
    old = {"label_encoding": "none", "d_mapping_layers": values.get("mapping_layers", TrainConfig.mapping_layers),
           "mask_encoding": "onehot", "mask_blur": 0.0, "mask_gain": 1.0}
    return TrainConfig(**{**old, **values})


def describe_masks(cfg: TrainConfig) -> str:
    """One line for the start of a masked run: how the mask is made and judged, and the options that change it."""
    parts = [f"masks: {cfg.mask_encoding} encoding", f"blur sigma {cfg.mask_blur:g} px on both sides' masks in D",
             "ADA off" if cfg.aug == "noaug" else f"--aug {cfg.aug}",
             f"D's minibatch stddev over groups of {cfg.mbstd_group} (--mbstd_group)"]
    if cfg.mask_consistency:
        terms = "the mask's term only" if not cfg.consistency_image else \
            "the image's term off the CSF rim" if not cfg.consistency_rim else "the image's term on the rim too"
        if cfg.consistency_mask_weight != 1:
            terms += f", the mask's term x{cfg.consistency_mask_weight:g}"
        if cfg.consistency_brain:
            terms += ", each over its brain's share"
        parts.append(f"in-loop segmenter (--mask_consistency {cfg.mask_consistency:g}, {terms}; 0 turns it off)")
    else:
        parts.append("no in-loop segmenter (--mask_consistency 0)")
    parts.append(f"{cfg.kimg:g} kimg (--kimg)")
    return ", ".join(parts)


def label_encoding(cfg: TrainConfig) -> str:
    """The label encoding the networks use: "auto" becomes "fourier" for numeric labels (slice position,
    covariates) and "none" for one-hot classes, where the official embedding already tells labels apart."""
    if cfg.label_encoding != "auto":
        return cfg.label_encoding
    names = cfg.label_names.split(",") if cfg.label_names else []
    return "none" if names and all(n.startswith("class_") for n in names) else "fourier"


def label_ranges(cfg: TrainConfig):
    """[(lo, hi)] per label from --label_range, or None when the labels are used as given (ValueError if
    malformed)."""
    if not cfg.label_range:
        return None
    ranges = [tuple(float(x) for x in part.split(":")) for part in cfg.label_range.split(",")]
    if len(ranges) != cfg.c_dim or any(len(r) != 2 or not r[1] > r[0] for r in ranges):
        raise ValueError(cfg.label_range)
    return ranges


def data_label_range(labels) -> str:
    """--label_range for training labels [N, c_dim]: "" when every value lies in [0, 1] (used as given),
    else each label's min:max over the data (a constant label gets min:min+1)."""
    if labels is None or (labels.min() >= 0 and labels.max() <= 1):
        return ""
    parts = []
    for column in labels.T:
        lo, hi = float(column.min()), float(column.max())
        parts.append(f"{lo:g}:{hi if hi > lo else lo + 1:g}")
    return ",".join(parts)


# ----------------------------------------------------------------------------------------------
# The command-line style shared by train.py, predict.py, dataset.py and bench.py

def normalize_argv(argv) -> list:
    """--noise-mode=x -> --noise_mode=x: underscores are the spelling, hyphens an accepted alias."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            arg = "--" + key.replace("-", "_") + eq + value
        out.append(arg)
    return out


class Parser(argparse.ArgumentParser):
    """argparse with the project's conventions: hyphenated spellings accepted, and a usage error raised as
    one ConfigError line (the programs print it and exit with code 2) instead of usage text."""

    def parse_args(self, args=None, namespace=None):
        return super().parse_args(normalize_argv(sys.argv[1:] if args is None else args), namespace)

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(normalize_argv(sys.argv[1:] if args is None else args), namespace)

    def error(self, message):
        raise ConfigError(f"{message} (see python {self.prog.split()[0]} --help)")


def parse_device(text: str):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> (type, index or None); anything else is a ConfigError."""
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", str(text))
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ConfigError(f"--device {text!r}: use auto, cpu, cuda or cuda:N")
    return m.group(1), int(m.group(2)) if m.group(2) is not None else None


def resolve_device(text: str = "auto", local_rank: int = 0):
    """The device rule of every program: auto = cuda:<local rank> when a GPU is visible, else cpu; cuda = the
    local rank's GPU; cuda:N as given. A GPU that is not there is a ConfigError naming --device."""
    import torch
    kind, index = parse_device(text)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {text}: no CUDA GPU is visible; use --device cpu or auto")
    index = local_rank if index is None else index
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {text}: only {torch.cuda.device_count()} GPU(s) are visible (cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)
