"""Run folders and checkpoints: the one place that writes files safely and reads them back.

Owns: the checkpoint format (plain tensors, numbers and strings; saved with fsync of the file and its
folder; loaded with weights_only, a version check and one-line errors), the one rule from a run folder to
its checkpoint file, rebuilding the networks a checkpoint describes, run-folder naming and locking,
log.jsonl, image grids and figures, and `atomic_write`, which every file the project writes goes through.
Does not own what a checkpoint holds (trainer.py builds the state) or how images are decoded (dataset.py).
"""

import errno
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

import errors
import config as config_lib
from modules import Discriminator, Generator

CHECKPOINT_FORMAT = "stylegan2-mri-checkpoint"
CHECKPOINT_VERSION = 3                  # bump when a key changes meaning; older versions stay readable
                                        # (3: the label embedding at lr 1; 2: "rng" holds the trainer's random
                                        # streams, 1: the global RNG's)
EMBED_VERSION = 3                       # first version whose label embedding is stored for lr multiplier 1
OLD_EMBED_LR_MUL = 0.01                 # the multiplier older versions stored the label embedding for
EMBED_KEYS = ("mapping.embed.weight", "mapping.embed.bias")
NETWORK_KEYS = ("G", "D", "G_ema")
RESUME_KEYS = ("config", "G", "D", "G_ema", "opt_G", "opt_D", "pl_mean", "ada_p", "ada_sum", "ada_count", "cur_nimg",
               "batch_idx", "tick", "nonfinite_total", "nonfinite_run", "sampler", "world_size", "rng")
TMP_MARK = ".tmp-"                      # temporary files are .<name>.tmp-<pid>, next to their target
LOCK_NAME = ".lock"
BEST_NAME = "best.json"                 # the best snapshot so far by the run's quality scores (monitor.py)
SNAPSHOT_RE = re.compile(r"snapshot-(\d+(?:\.\d+)?)\.pt")
# torch.save reports a failed write as a RuntimeError without an errno: "unexpected pos 576 vs 534", "file write
# failed" or "basic_ios::clear: iostream error" when the disk fills, "Parent directory X does not exist." for a
# missing folder
TORCH_WRITE_FAILED = re.compile(r"unexpected pos|write failed|failed writing|iostream error|No space left|Disk quota|"
                                r"Parent directory .* does not exist")
TORCH_PREFIX = re.compile(r"^\[enforce fail at [^\]]*\][ .]*")     # where in torch's C++ it failed
TORCH_NO_FOLDER = re.compile(r"Parent directory .* does not exist")
DISK_FULL_TEXT = re.compile(r"No space left|Disk quota")
FULL_BELOW = 1 << 20                    # bytes free under which such a write is taken as a full disk


class RunError(errors.ProjectError):
    """A checkpoint or run-folder file that cannot be read or written, as one line that names it."""


# ----------------------------------------------------------------------------------------------
# Writing files: temporary name, fsync, rename, fsync of the folder

def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return                                                   # e.g. a platform without directory fds
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_failed(e: BaseException) -> bool:
    """Whether e is a failed file write: an OSError, or the RuntimeError torch.save raises for one (a full
    disk, a missing folder), which carries no errno."""
    return isinstance(e, OSError) or isinstance(e, RuntimeError) and TORCH_WRITE_FAILED.search(str(e)) is not None


def _disk_full(folder: Path, e: BaseException) -> bool:
    """Whether a failed write means a full disk: its errno or text says so, or torch's failure left the disk
    with (almost) no free space."""
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or DISK_FULL_TEXT.search(str(e)):
        return True
    if not isinstance(e, RuntimeError) or TORCH_NO_FOLDER.search(str(e)):
        return False
    try:                                                          # torch: "unexpected pos", "file write failed"
        return shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        return False


def write_error(path, e: BaseException) -> RunError:
    """One line for a failed write (an OSError, or a RuntimeError of torch.save): a full disk and a missing
    folder are named as such."""
    path = Path(path)
    code = getattr(e, "errno", None)
    text = str(e).strip()
    reason = getattr(e, "strerror", None) or (TORCH_PREFIX.sub("", text.splitlines()[0]) if text else type(e).__name__)
    if _disk_full(path.parent, e):
        return RunError(f"{path}: the disk is full ({reason if code else 'No space left on device'}); free space "
                        f"there and run again (the previous file, if any, is intact)")
    if (code == errno.ENOENT or TORCH_NO_FOLDER.search(str(e))) and not path.parent.is_dir():
        return RunError(f"{path}: the folder {path.parent} does not exist; create it or choose another")
    if code == errno.ENOTDIR:
        return RunError(f"{path}: a part of {path.parent} is a file, not a folder; choose another folder")
    if code == errno.EISDIR:
        return RunError(f"{path}: is a folder, not a file; move it away or choose another name")
    return RunError(f"{path}: cannot be written ({reason}); check the folder's permissions and space")


def atomic_write(path, write, mode: int = 0o644) -> Path:
    """write(tmp) to a temporary file next to path, fsync it, rename it over path and fsync the folder: a
    crash or a full disk leaves either the old file or the new one, never a part. The temporary file is
    removed on failure. Files are made readable by everyone (mode), as shared data folders need.
    Raises RunError (one line) when the file cannot be written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if not write_failed(e):
            raise                                                 # a RuntimeError of something else: a bug
        raise write_error(path, e) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    _fsync_dir(path.parent)
    return path


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def remove_stale_temporaries(folder: Path) -> list:
    """Delete temporary files left in folder by processes that died mid-write (their pid is gone or they
    are this process's own); returns the names removed."""
    removed = []
    for p in Path(folder).glob(f".*{TMP_MARK}*"):
        pid = p.name.rpartition(TMP_MARK)[2]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            p.unlink()
            removed.append(p.name)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# Checkpoints

def nonfinite_tensor(state: dict, keys=NETWORK_KEYS):
    """The name of the first network tensor in state that holds NaN or inf, or None."""
    for key in keys:
        for name, t in (state.get(key) or {}).items():
            if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
                return f"{key}.{name}"
    return None


def save_checkpoint(path, state: dict) -> Path:
    """Write a checkpoint atomically. Non-finite network weights are refused (RunError): a checkpoint on
    disk always holds weights that can be sampled and trained from."""
    bad = nonfinite_tensor(state)
    if bad is not None:
        raise RunError(f"{path}: not written, the weights hold NaN or inf ({bad})")
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def checkpoint_size(state: dict) -> int:
    """Bytes that torch.save of state will take, roughly (tensor data only)."""
    total = 0

    def walk(x):
        nonlocal total
        if torch.is_tensor(x):
            total += x.numel() * x.element_size()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
    walk(state)
    return total


def resolve_checkpoint(path, option: str = "--checkpoint") -> Path:
    """The one rule from what a user gives to a checkpoint file: a file as given; a run folder's
    checkpoint.pt, else its highest-kimg snapshot-<kimg>.pt. A checkpoint.pt that is there but is no file (a
    dangling symbolic link, a folder) is refused, naming the cause, rather than passed over."""
    path = Path(path)
    if path.is_dir() and path.suffix != ".pt":
        checkpoint = path / "checkpoint.pt"
        if os.path.lexists(checkpoint):
            broken = not_a_file(checkpoint)
            if broken:
                raise RunError(f"{option} {path}: its checkpoint.pt is {broken}")
            return checkpoint
        snaps = [(float(m.group(1)), p) for p in path.glob("snapshot-*.pt") if (m := SNAPSHOT_RE.fullmatch(p.name))]
        if not snaps:
            raise RunError(f"{option} {path}: no checkpoint.pt or snapshot-<kimg>.pt in this folder")
        return max(snaps)[1]
    if not path.is_file():
        broken = not_a_file(path) if os.path.lexists(path) else None
        if broken:
            raise RunError(f"{option} {path}: is {broken}")
        raise RunError(f"{option} {path}: no such file or folder; give a checkpoint file or its run folder")
    return path


def not_a_file(path: Path):
    """Why a name that is there cannot be read as a checkpoint file, with what to do, or None when it can."""
    if path.is_symlink() and not path.exists():
        return (f"a symbolic link to {os.readlink(path)}, which does not exist; restore that file or point the "
                f"link at one that exists")
    if path.is_dir():
        return "a folder, not a checkpoint file; move it away or give the checkpoint file itself"
    if not path.is_file():
        return "not a regular file; give a checkpoint file"
    return None


def read_best(run_dir):
    """best.json of a run folder as a dict, or None when there is none (or it cannot be read)."""
    try:
        best = json.loads((Path(run_dir) / BEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return best if isinstance(best, dict) and isinstance(best.get("snapshot"), str) else None


def best_checkpoint(run_dir, option: str = "--checkpoint") -> Path:
    """The snapshot best.json names in a run folder (predict.py --best)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{option} {run_dir}: --best needs a run folder (it reads the folder's {BEST_NAME})")
    best = read_best(run_dir)
    if best is None:
        raise RunError(f"{option} {run_dir}: no {BEST_NAME} (the run has not scored a snapshot yet, or ran with "
                       f"--metrics_num=0); give a checkpoint without --best")
    path = run_dir / best["snapshot"]
    if not path.is_file():
        raise RunError(f"{run_dir / BEST_NAME} names {best['snapshot']}, which is missing; give a checkpoint "
                       f"without --best")
    return path


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(e).__name__


def load_checkpoint(path, option: str = "--checkpoint", need=NETWORK_KEYS, check_finite: bool = True) -> dict:
    """Load a checkpoint of this project with weights_only=True (nothing in the file is executed). Every
    problem is one RunError line: missing, truncated, pickled objects, another program's file, a newer
    version, missing keys, NaN weights."""
    path = resolve_checkpoint(path, option)
    try:
        with warnings.catch_warnings():                           # torch warns before refusing; we say it once
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                                        # torch raises many types for bad files
        foreign = _foreign_globals(path)
        if foreign:
            raise RunError(f"{path}: holds pickled Python objects ({foreign[0]}), which are refused (loading them could run code); "
                           f"only this project's plain-tensor checkpoints can be loaded") from None
        reason = "not a torch file, or a damaged one" if "Weights only" in str(e) else _first_line(e)
        raise RunError(f"{path}: unreadable or truncated checkpoint ({reason}); try the previous snapshot") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not a checkpoint of this project (no '{CHECKPOINT_FORMAT}' marker)")
    version = state.get("version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise RunError(f"{path}: checkpoint version {version!r}, this code reads versions 1 to {CHECKPOINT_VERSION}; "
                       f"update the code")
    missing = [k for k in ("config", *need) if k not in state]
    if missing:
        raise RunError(f"{path}: damaged checkpoint, the key '{missing[0]}' is missing; try the previous snapshot")
    bad = nonfinite_tensor(state) if check_finite else None
    if bad is not None:
        raise RunError(f"{path}: the weights hold NaN or inf ({bad}); use an earlier snapshot")
    upgrade_embedding(state)
    return state


def old_embedding(state: dict) -> bool:
    """Whether a checkpoint stores a label embedding for the old multiplier (versions before EMBED_VERSION)."""
    return state["version"] < EMBED_VERSION and any(
        isinstance(state.get(key), dict) and EMBED_KEYS[0] in state[key] for key in NETWORK_KEYS)


def upgrade_embedding(state: dict) -> None:
    """Versions before EMBED_VERSION stored the label embedding (G's and D's) for lr multiplier 0.01: the
    layer computed W_s c * 0.01 / sqrt(in) + b_s * 0.01. At multiplier 1 the same function is stored as
    W_s * 0.01 and b_s * 0.01, so loading rescales them in place (the networks then compute what they did)."""
    if not old_embedding(state):
        return
    for key in NETWORK_KEYS:
        tensors = state.get(key)
        if isinstance(tensors, dict):
            for name in EMBED_KEYS:
                if name in tensors:
                    tensors[name] = tensors[name] * OLD_EMBED_LR_MUL
    state["embedding_upgraded_from"] = state["version"]


def pickled_globals(path) -> list:
    """The classes and functions a pickle (raw, or the data.pkl of a torch zip) would import, read with
    pickletools without executing anything; [] when the bytes are not a pickle."""
    import io
    import pickletools
    import zipfile
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        else:
            with open(path, "rb") as f:
                data = f.read(64 << 20)
        found, strings = [], []
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]))
            elif isinstance(arg, str):
                strings.append(arg)
        return found
    except Exception:                                             # not a pickle, or a damaged one
        return []


def _foreign_globals(path) -> list:
    return [g for g in pickled_globals(path) if not g.startswith("torch") and g != "collections.OrderedDict"]


def build_networks(cfg, conv_clamp=None):
    """(G, D) for a TrainConfig."""
    mask_classes = config_lib.MASK_CLASSES if cfg.masks else 0
    encoding, ranges = config_lib.label_encoding(cfg), config_lib.label_ranges(cfg)
    G = Generator(z_dim=cfg.z_dim, w_dim=cfg.w_dim, img_resolution=cfg.resolution, img_channels=cfg.img_channels,
                  mapping_layers=cfg.mapping_layers, channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                  conv_clamp=conv_clamp, mask_classes=mask_classes, mask_encoding=cfg.mask_encoding,
                  mask_head=cfg.mask_head, c_dim=cfg.c_dim, label_encoding=encoding, label_range=ranges)
    D = Discriminator(img_resolution=cfg.resolution, img_channels=cfg.img_channels, channel_base=cfg.channel_base,
                      channel_max=cfg.channel_max, mbstd_group_size=cfg.mbstd_group, conv_clamp=conv_clamp,
                      mask_classes=mask_classes, mask_encoding=cfg.mask_encoding, c_dim=cfg.c_dim,
                      mapping_layers=cfg.d_mapping_layers,
                      label_encoding=encoding, label_range=ranges)
    return G, D


def checkpoint_config(state: dict, path) -> "config_lib.TrainConfig":
    try:
        return config_lib.from_dict(state["config"])
    except (config_lib.ConfigError, TypeError, AttributeError) as e:
        raise RunError(f"{path}: its config cannot be read ({_first_line(e)}); was it written by another version?") \
            from None


def load_networks_into(modules_by_key: dict, state: dict, path) -> None:
    """Load state[key] into each module; a shape or name mismatch is one RunError line naming the tensor."""
    for key, module in modules_by_key.items():
        try:
            module.load_state_dict(state[key])
        except (RuntimeError, KeyError, TypeError) as e:
            raise RunError(f"{path}: {key} does not match its config ({_first_line(e)}); the file is damaged or "
                           f"was written by another version") from None


def load_generator(path, device, option: str = "--checkpoint"):
    """(G_ema in eval mode on device, its TrainConfig, the checkpoint state, the file) for sampling."""
    path = resolve_checkpoint(path, option)
    state = load_checkpoint(path, option, need=("G_ema",))
    cfg = checkpoint_config(state, path)
    G, _ = build_networks(cfg)                                    # fp32 inference: no conv_clamp
    load_networks_into({"G_ema": G}, state, path)
    return G.eval().requires_grad_(False).to(device), cfg, state, path


def last_checkpoint(run_dir: Path) -> str:
    """Where a stopped run can go on from, in words (checkpoints only ever hold finite weights)."""
    path = run_dir / "checkpoint.pt"
    if not os.path.lexists(path):
        return f"no checkpoint was written yet in {run_dir}"
    broken = not_a_file(path)
    if broken:
        return f"{path} is {broken}"
    try:
        state = load_checkpoint(path, need=())
    except RunError as e:
        return f"the last checkpoint cannot be read ({e})"
    return f"the last good checkpoint is {path} (kimg {state['cur_nimg'] / 1000:g}, step {state['batch_idx']})"


def load_for_resume(resume: str, given: dict):
    """train.py --resume: (the checkpoint's config with the options given now on top, the state, the run
    folder, the options that differ from the checkpoint's as 'key old -> new' lines). Only a full
    checkpoint.pt (with optimizer state) can continue exactly."""
    path = resolve_checkpoint(resume, "--resume")
    state = load_checkpoint(path, "--resume", need=RESUME_KEYS[:4])
    if "opt_G" not in state:
        raise RunError(f"--resume {resume}: a snapshot keeps the networks but not the optimizer state, so it "
                       f"cannot continue exactly; resume from the run folder's checkpoint.pt")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise RunError(f"{path}: damaged checkpoint, the key '{missing[0]}' is missing; try the previous snapshot")
    if "embedding_upgraded_from" in state:
        raise RunError(f"--resume {resume}: checkpoint version {state['embedding_upgraded_from']} trained the label "
                       f"embedding at lr multiplier {OLD_EMBED_LR_MUL} (now 1, as in the official code), so its "
                       f"optimizer state cannot continue; start a new run from its networks with --init_from {path}")
    saved = checkpoint_config(state, path)
    cfg = config_lib.resume_config(state["config"], dict(given, resume=resume))
    changed = [f"{k} {getattr(saved, k)!r} -> {getattr(cfg, k)!r}" for k in given
               if k not in ("resume", "preset") and getattr(saved, k) != getattr(cfg, k)]
    return cfg, state, path.parent, changed


# ----------------------------------------------------------------------------------------------
# Run folders

def new_run_dir(outdir, preset: str) -> Path:
    """runs/NNNNN-<preset>: one more than the highest number there; never reuses a folder."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"--outdir {outdir}: cannot create it ({e.strerror}); choose a writable folder") from None
    numbers = [int(p.name[:5]) for p in outdir.iterdir() if p.name[:5].isdigit()]
    n = max(numbers, default=-1) + 1
    while True:
        path = outdir / f"{n:05d}-{preset}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
        except OSError as e:
            raise RunError(f"--outdir {outdir}: cannot create a run folder in it ({e.strerror}); choose a "
                           f"writable folder") from None


def check_writable(folder, option: str = "--outdir") -> Path:
    """Make folder (and parents) and prove a file can be written there, before any expensive work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test{TMP_MARK}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunError(f"{option} {folder}: not a writable folder ({e.strerror}); choose another") from None
    return folder


class RunLock:
    """An exclusive lock on a run folder while a process trains in it (fcntl.flock on <run>/.lock, released
    by the kernel when the process dies, so a kill -9 never leaves a stale lock)."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd = None

    def acquire(self) -> "RunLock":
        import fcntl
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(self.fd, 64).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise RunError(f"{self.path.parent}: in use by process {other}, which is training in it; wait for it "
                           f"to end or stop it first") from None
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, str(os.getpid()).encode())
        except OSError as e:
            self.release()
            raise write_error(self.path, e) from None
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)                                      # closing drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def kimg_tag(nimg: int) -> str:
    """File-name tag of a training position: 000040 for 40 kimg, 0000.160 for 160 images."""
    return f"{nimg // 1000:06d}" if nimg % 1000 == 0 else f"{nimg / 1000:08.3f}"


def append_log(path, record: dict) -> None:
    """One JSON line appended to log.jsonl and flushed to disk. A write that fails (a full disk) is cut back
    off, so the file stays as it was; a line cut off by a kill is skipped by read_log."""
    line = memoryview((json.dumps(record) + "\n").encode())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        start = os.fstat(fd).st_size
        try:
            while line:
                line = line[os.write(fd, line):]                  # a full disk first writes only a part
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise write_error(path, e) from None
    finally:
        os.close(fd)


def read_log(path) -> list:
    """Tick records of log.jsonl; after a resume the replayed ticks replace the earlier ones."""
    by_tick = {}
    path = Path(path)
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue                                            # a line cut off by a crash
            if isinstance(record, dict) and "tick" in record and "event" not in record:
                by_tick[record["tick"]] = record
    return [by_tick[t] for t in sorted(by_tick)]


# ----------------------------------------------------------------------------------------------
# Images and figures

def tile(images: torch.Tensor, cols: int) -> np.ndarray:
    """uint8 [N, C, H, W] -> one uint8 grid [rows * H, cols * W] (C = 1) or [rows * H, cols * W, C]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"tile() takes uint8 images, got {images.dtype}")
    n, c, h, w = images.shape
    rows = math.ceil(n / cols)
    grid = torch.zeros(c, rows * h, cols * w, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = images[i]
    return grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()


def save_png(array: np.ndarray, path) -> Path:
    """An 8-bit grayscale [H, W] or RGB [H, W, 3] array as a PNG, atomically."""
    from PIL import Image
    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_grid(images: torch.Tensor, path, cols: int) -> Path:
    """uint8 [N, C, H, W] -> one PNG grid."""
    return save_png(tile(images.cpu(), cols), path)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed); the one place that selects it."""
    import matplotlib
    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi: int = 100) -> Path:
    """A matplotlib figure as a PNG, atomically; the figure is closed either way."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        pyplot().close(fig)


def plot_log(log_path, out, panels, dpi: int = 90) -> None:
    """losses.png-style figure of log.jsonl: one panel per (title, [keys]) against kimg."""
    records = read_log(log_path)
    if not records:
        return
    plt = pyplot()
    kimg = [r["kimg"] for r in records]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(r["kimg"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), label=key, marker="." if len(points) < len(kimg) or len(points) == 1 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("kimg")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out, dpi=dpi)
