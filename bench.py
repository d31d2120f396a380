"""Speed measurements, on whatever machine this runs on, and the networks' size summary. Owns timing and
the command lines that print them; what it times lives in modules.py and ops.py (the networks and their
operations), train.py (a training iteration), augment.py, dataset.py and metrics.py.

    python bench.py summary --resolution 256
    python bench.py networks --resolution 256 --batch 16 --device cuda
    python bench.py train --preset oasis256 --profile R1,PL
    python bench.py train --preset oasis256 --compile --device cuda       (eager vs torch.compile)
    python bench.py networks --against /tmp/old --resolution 64 --channel_base 2048 --channel_max 64 --batch 8
    python bench.py data --images 10000 --resolution 256 --batch 32
    python bench.py augment --resolution 256 --batch 32
    python bench.py ssim --queries 1000 --references 10000

`summary`: the G and D layer tables and parameter counts (no timing). `networks`: generation and one
forward+backward pass of G and D (no regularizers, augmentation or data); with --against, the same passes
and R1 / path length in this checkout and an older one. `train`: a preset's training iteration: phase split,
steady images/s, FLOPs per image, TFLOP/s and, on a GPU, MFU against a measured bf16 matmul peak; other
--key=value options override the config. `data`: first-time decode into the cache, a later start from it,
and batch serving. `augment`: the pipe against a training iteration. `ssim`: metrics.ssim against
scikit-image, and the nearest-real search at scale.
"""

import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import config
import dataset
import demo
import errors
from modules import Discriminator, Generator, count_params, summary_rows


def timed(fn, iters: int, warmup: int, device: torch.device) -> float:
    """Mean seconds per call of fn over `iters` calls after `warmup` untimed calls. The CUDA peak-memory
    counter is reset after the warm-up, so cuDNN's algorithm search does not count as the peak."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def autocast(device: torch.device, precision: str):
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def output_error(G, device: torch.device, precision: str, fused_modconv: bool, batch: int = 8) -> float:
    """Relative RMS difference of G's images from the same G evaluated in float64 (same z, const noise)."""
    z = torch.randn(batch, G.z_dim, device=device, generator=torch.Generator(device).manual_seed(123))
    with autocast(device, precision):
        img = G(z, noise_mode="const", fused_modconv=fused_modconv).double()
    ref = G.double()(z.double(), noise_mode="const", fused_modconv=False)
    G.float()
    return ((img - ref).square().mean().sqrt() / ref.square().mean().sqrt()).item()


def bench_networks(G, D, batch: int, device: torch.device, precision: str, fused_modconv: bool,
                   iters: int, warmup: int) -> dict:
    """Images/s of G inference and of one G+D forward/backward pass (non-saturating losses)."""
    z = torch.randn(batch, G.z_dim, device=device)
    reals = torch.randn(batch, G.img_channels, G.img_resolution, G.img_resolution, device=device)

    @torch.no_grad()
    def generate():
        with autocast(device, precision):
            G(z, noise_mode="const", fused_modconv=fused_modconv)

    def gan_step():
        with autocast(device, precision):
            fakes = G(z, fused_modconv=fused_modconv)
            loss = F.softplus(-D(fakes)).mean() + F.softplus(D(reals)).mean()
        loss.backward()

    gen_s = timed(generate, iters, warmup, device)
    step_s = timed(gan_step, iters, warmup, device)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    return {"precision": precision, "modconv": "fused" if fused_modconv else "unfused",
            "gen_img_s": batch / gen_s, "step_img_s": batch / step_s, "peak_gib": peak,
            "error": output_error(G, device, precision, fused_modconv)}


def bench_data(args) -> None:
    """First-time decode, cached start and batch serving, on copies of the demo (or --data) slices."""
    source = dataset.find_source(args.data or demo.ensure_demo(), "train")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp) / "slices"
        folder.mkdir()
        for i in range(args.images):                      # distinct files; content cycles over the source
            src = source.files[i % len(source.files)]
            shutil.copyfile(src, folder / f"{i:06d}{src.suffix}")
        quiet = lambda msg: None
        start = time.perf_counter()
        ds = dataset.ImageDataset(folder, resolution=args.resolution, cache_dir=Path(tmp) / "cache", log=quiet)
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        cached = dataset.ImageDataset(folder, resolution=args.resolution, cache_dir=Path(tmp) / "cache", log=quiet)
        cached_s = time.perf_counter() - start
        assert cached.info["from_cache"] and len(cached) == len(ds) == args.images
        mirrored = dataset.ImageDataset(folder, resolution=args.resolution, cache_dir=Path(tmp) / "cache",
                                        mirror=True, log=quiet)
        sampler = dataset.InfiniteSampler(len(mirrored), seed=0)
        rows = []
        for what, fn in [("uint8 batches (get)", lambda idx: mirrored.get(idx)),
                         ("float [-1, 1] batches (batch)", lambda idx: mirrored.batch(idx))]:
            fn(sampler.next(args.batch))
            n_batches = max(1, 2000 // args.batch)
            start = time.perf_counter()
            for _ in range(n_batches):
                fn(sampler.next(args.batch))
            rows.append((what, n_batches * args.batch / (time.perf_counter() - start)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores | torch {torch.__version__} | "
          f"{args.images} PNG files (copies of {len(source.files)} slices from {source.image_dir}), "
          f"decoded at {args.resolution} px")
    print("| step | result |")
    print("|---|---:|")
    print(f"| first-time decode into the cache | {decode_s:.1f} s ({args.images / decode_s:,.0f} img/s) |")
    print(f"| later start from the cache | {cached_s:.2f} s |")
    for what, rate in rows:
        print(f"| serving {what}, batch {args.batch}, x-flip on | {rate:,.0f} img/s |")


def bench_augment(args) -> None:
    """Cost of the augmentation pipe on a batch against one full training iteration (oasis256 networks,
    same batch, lazy R1 and path length amortized), on the same device."""
    import augment
    import train
    device = config.resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    images = torch.rand(args.batch, 1, args.resolution, args.resolution, device=device) * 2 - 1
    rows = []
    for p in (0.2, 0.5, 1.0):
        pipe = augment.AugmentPipe(img_channels=1, pipeline=args.pipeline, p=p).to(device)
        rows.append((p, timed(lambda: pipe(images), args.iters, args.warmup, device)))
    cfg = config.parse_args(["--preset=oasis256", f"--resolution={args.resolution}", f"--batch={args.batch}",
                             f"--mbstd_group={min(4, args.batch)}", "--aug=noaug"])

    class Batch:                                     # a stand-in data set: the same random batch
        def __len__(self):
            return args.batch

        def batch(self, idx, device=None, mask_encoding="onehot"):
            return images
    trainer = train.Trainer(cfg, device, data=Batch(), log=lambda m: None)
    phase = {"D": lambda: trainer.d_step(images), "R1": lambda: trainer.r1_step(images),
             "G": trainer.g_step, "PL": trainer.pl_step}
    cost = {k: timed(fn, args.step_iters, args.step_warmup, device) for k, fn in phase.items()}
    step_s = cost["D"] + cost["G"] + cost["R1"] / cfg.r1_interval + cost["PL"] / cfg.pl_interval
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name} | torch {torch.__version__} | batch {args.batch} at {args.resolution} px, pipeline "
          f"{args.pipeline}; training iteration (oasis256 networks, {'bf16' if trainer.amp_dtype else 'fp32'}): "
          f"D {cost['D'] * 1e3:.0f} ms, G {cost['G'] * 1e3:.0f} ms, R1 {cost['R1'] * 1e3:.0f} ms / "
          f"{cfg.r1_interval}, PL {cost['PL'] * 1e3:.0f} ms / {cfg.pl_interval} = {step_s * 1e3:.0f} ms")
    print("| p | augment ms per batch | share of a training iteration |")
    print("|---:|---:|---:|")
    for p, sec in rows:
        # D sees the pipe twice per D step (reals and fakes) and once per G step.
        print(f"| {p} | {sec * 1e3:.1f} | {3 * sec / step_s:.1%} (3 calls per iteration) |")


class StandIn:
    """A data set that serves one fixed random batch: training speed without the data loader (whose own
    throughput `bench.py data` measures)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return self.images.shape[0]

    def batch(self, idx, device=None, mask_encoding="onehot"):
        return self.images


def count_flops(fn) -> int:
    """Floating-point operations of one call of fn: convolutions and matrix products, forward and
    backward, with the formulas of torch.utils.flop_counter (elementwise work is not counted). Its
    FlopCounterMode is not used because its module hooks do not support torch.autograd.grad."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += formula(*args, **(kwargs or {}), out_val=out)
            return out

    with Counter():
        fn()
    return Counter.total


def matmul_peak_tflops(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 dense matmul throughput: the practical peak that MFU is taken against."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    sec = timed(lambda: a @ b, iters, 3, device)
    return 2 * n ** 3 / sec / 1e12


def training_phases(trainer, reals: torch.Tensor) -> dict:
    """One callable per phase of a training iteration, as Trainer.step runs them."""
    return {"D": lambda: trainer.d_step(reals), "R1": lambda: trainer.r1_step(reals),
            "G": trainer.g_step, "PL": trainer.pl_step}


def stand_in_reals(cfg, device: torch.device) -> torch.Tensor:
    """Random real batch in the shape D reads: the image channels, and with --masks random class levels."""
    reals = torch.rand(cfg.batch, cfg.img_channels, cfg.resolution, cfg.resolution, device=device) * 2 - 1
    if not cfg.masks:
        return reals
    labels = torch.randint(config.MASK_CLASSES, (cfg.batch, cfg.resolution, cfg.resolution), dtype=torch.uint8)
    return torch.cat([reals, dataset.mask_channels(labels, config.MASK_CLASSES, cfg.mask_encoding).to(device)], dim=1)


def bench_train_once(cfg, device: torch.device, args) -> dict:
    import train
    reals = stand_in_reals(cfg, device)
    trainer = train.Trainer(cfg, device, data=StandIn(reals), log=lambda m: None)
    trainer.ada_p = args.p if cfg.aug != "noaug" else 0.0
    rates = {"D": 1, "G": 1, "R1": 1 / cfg.r1_interval, "PL": 1 / cfg.pl_interval}
    phases = training_phases(trainer, reals)
    flops = {k: count_flops(fn) for k, fn in phases.items()}
    g_fwd = count_flops(lambda: trainer.G_ema(torch.randn(1, cfg.z_dim, device=device)))
    d_fwd = count_flops(lambda: trainer.D(reals[:1]))
    flops_img = sum(flops[k] * rates[k] for k in flops) / cfg.batch
    if args.flops_only:
        return {"flops_img": flops_img, "g_fwd": g_fwd, "d_fwd": d_fwd}
    cost = {k: timed(fn, args.phase_iters, args.warmup, device) for k, fn in phases.items()}
    aug_ms = 0.0
    if trainer.augment_pipe is not None and trainer.ada_p > 0:
        trainer.augment_pipe.p = trainer.ada_p
        aug_ms = timed(lambda: trainer.augment_pipe(reals), args.phase_iters, args.warmup, device) * 1e3
    step_s = timed(trainer.step, args.iters, args.warmup, device)       # the real loop, no syncs added
    out = {"img_s": cfg.batch / step_s, "s_kimg": step_s * 1000 / cfg.batch,
           "ms": {k: v * 1e3 for k, v in cost.items()}, "aug_ms": aug_ms,
           "flops_img": flops_img, "g_fwd": g_fwd, "d_fwd": d_fwd,
           "tflops": flops_img * cfg.batch / step_s / 1e12,
           "peak_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        for name in args.profile.split(","):
            with profile(activities=acts) as prof:
                phases[name]()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(f"profile of one {name} call:\n{prof.key_averages().table(sort_by=key, row_limit=12)}")
    return out


def bench_train(args) -> None:
    """Training throughput of a preset: phase split, steady images/s, FLOPs, TFLOP/s and MFU."""
    device = config.resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    cfg = config.parse_args([f"--preset={args.preset}", *args.set])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()} ({len(os.sched_getaffinity(0))} cores)"
    peak = matmul_peak_tflops(device) if device.type == "cuda" else None
    print(f"device: {name} | torch {torch.__version__} | preset {args.preset} {' '.join(args.set)} | "
          f"{cfg.resolution} px, batch {cfg.batch}, aug {cfg.aug} at p={args.p}, "
          f"precision {cfg.mixed_precision}" + (f" | measured bf16 matmul peak {peak:.0f} TFLOP/s" if peak else ""))
    if args.compile:
        bench_train_compile(cfg, device, args, peak)
        return
    if args.flops_only:
        r = bench_train_once(cfg, device, args)
        print(f"FLOPs per image: G forward {r['g_fwd'] / 1e9:.2f} G, D forward {r['d_fwd'] / 1e9:.2f} G, training "
              f"image (D + G steps, R1 / {cfg.r1_interval}, PL / {cfg.pl_interval}) {r['flops_img'] / 1e9:.1f} G")
        return
    print("| preset | img/s | s/kimg | D ms | G ms | R1 ms | PL ms | aug ms | GFLOP/img | TFLOP/s | MFU | peak GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    r = bench_train_once(cfg, device, args)
    ms = r["ms"]
    mfu = f"{r['tflops'] / peak:.1%}" if peak else "-"
    print(f"| {args.preset} | {r['img_s']:.1f} | {r['s_kimg']:.2f} | {ms['D']:.0f} | {ms['G']:.0f} | {ms['R1']:.0f} "
          f"| {ms['PL']:.0f} | {r['aug_ms']:.0f} | {r['flops_img'] / 1e9:.3g} | {r['tflops']:.3g} | {mfu} "
          f"| {'-' if r['peak_gib'] != r['peak_gib'] else format(r['peak_gib'], '.1f')} |", flush=True)
    print(f"FLOPs per image: G forward {r['g_fwd'] / 1e9:.2f} G, D forward {r['d_fwd'] / 1e9:.2f} G, "
          f"training image (D + G steps, R1 / {cfg.r1_interval}, PL / {cfg.pl_interval}) {r['flops_img'] / 1e9:.1f} G")


COMPILE_VARIANTS = (("eager", False), ("torch.compile", True))    # (name, cfg.compile)


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def bench_train_compile(cfg, device: torch.device, args, peak) -> None:
    """One preset eager and with cfg.compile (train.py compiles G's synthesis and D for the first-order
    steps) side by side: one Trainer each (same seed, so the same networks), repetitions interleaved (A B,
    B A, ...) with the same random draws, medians reported. Each repetition times every phase alone, then
    `--iters` real training iterations."""
    import dataclasses
    import train
    reals = stand_in_reals(cfg, device)
    variants = COMPILE_VARIANTS
    trainers = {}
    for name, compiled in variants:
        vcfg = dataclasses.replace(cfg, compile=compiled)
        trainer = train.Trainer(vcfg, device, data=StandIn(reals), log=lambda m: None)
        trainer.ada_p = args.p if cfg.aug != "noaug" else 0.0
        trainers[name] = trainer
    # Model FLOPs of the eager networks, the same for both variants (MFU); the slice-sum FIR filters are
    # elementwise work and not counted.
    flops = {k: count_flops(fn) for k, fn in training_phases(trainers[variants[0][0]], reals).items()}
    rates = {"D": 1, "G": 1, "R1": 1 / cfg.r1_interval, "PL": 1 / cfg.pl_interval}
    flops_img = sum(flops[k] * rates[k] for k in flops) / cfg.batch
    times = {name: {k: [] for k in ("D", "R1", "G", "PL", "aug", "step")} for name, _ in variants}
    peak_gib = {}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda d=None: None)
    for rep in range(-args.warmup, args.reps):        # negative repetitions: warm-up (and compilation)
        for name, _ in (variants if rep % 2 == 0 else variants[::-1]):   # A B, B A: load drifts cancel
            trainer = trainers[name]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            torch.manual_seed(1000 + rep)
            phases = dict(training_phases(trainer, reals))
            if trainer.augment_pipe is not None and trainer.ada_p > 0:
                trainer.augment_pipe.p = trainer.ada_p
                phases["aug"] = lambda t=trainer: t.augment_pipe(reals)
            for k, fn in phases.items():
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                if rep >= 0:
                    times[name][k].append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(args.iters):
                trainer.step()
            sync(device)
            if rep >= 0:
                times[name]["step"].append((time.perf_counter() - start) / args.iters)
            if device.type == "cuda":
                peak_gib[name] = max(peak_gib.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2 ** 30)
    print(f"{args.reps} interleaved repetitions (after {args.warmup} warm-up), medians; each: every phase once, then "
          f"{args.iters} training iterations; model FLOPs {flops_img / 1e9:.3g} G per image")
    cols = ["D", "R1", "G", "PL", "aug"]
    print("| variant | img/s | s/kimg | " + " | ".join(f"{c} ms" for c in cols)
          + " | TFLOP/s | MFU | peak GiB |")
    print("|---|---:|---:|" + "---:|" * len(cols) + "---:|---:|---:|")
    base = None
    for name, _ in variants:
        t = times[name]
        step_s = median(t["step"])
        ms = {c: median(t[c]) * 1e3 if t[c] else float("nan") for c in cols}
        tflops = flops_img * cfg.batch / step_s / 1e12
        mfu = f"{tflops / peak:.1%}" if peak else "-"
        gib = format(peak_gib[name], ".1f") if name in peak_gib else "-"
        print(f"| {name} | {cfg.batch / step_s:.1f} | {step_s * 1000 / cfg.batch:.2f} | "
              + " | ".join(f"{ms[c]:.0f}" for c in cols) + f" | {tflops:.3g} | {mfu} | {gib} |")
        if base is None:
            base = (step_s, ms)
            continue
        print(f"| speed-up over eager | {base[0] / step_s:.2f}x | | "
              + " | ".join(f"{base[1][c] / ms[c]:.2f}x" if ms[c] == ms[c] else "-" for c in cols) + " | | | |",
              flush=True)


def network_passes(G, D, batch: int, device: torch.device) -> dict:
    """{name: callable}: one G+D forward+backward (non-saturating losses), one R1 pass (D's input gradient,
    then its square's gradient) and one path-length pass (G's gradient w.r.t. ws, then its square's), fp32,
    unfused modconv, channels_last. Also run by --against inside an older checkout (keep it self-contained)."""
    gen = torch.Generator(device).manual_seed(0)
    z = torch.randn(batch, G.z_dim, device=device, generator=gen)
    reals = torch.randn(batch, G.img_channels, G.img_resolution, G.img_resolution, device=device,
                        generator=gen).contiguous(memory_format=torch.channels_last)
    G.to(memory_format=torch.channels_last)
    D.to(memory_format=torch.channels_last)

    def gan_step():
        fakes = G(z)
        (F.softplus(-D(fakes)).mean() + F.softplus(D(reals)).mean()).backward()

    def r1_pass():
        x = reals.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x).sum(), [x], create_graph=True)
        g.square().sum().backward()

    def pl_pass():
        ws = G.mapping(z[:max(1, batch // 2)]).detach().requires_grad_(True)
        img = G.synthesis(ws)
        (g,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), [ws], create_graph=True)
        g.square().sum().backward()

    return {"G+D fwd+bwd": gan_step, "R1 pass": r1_pass, "path-length pass": pl_pass}


# One process of --against: builds the networks of the checkout on sys.path[0] and prints median ms per pass.
_AGAINST_CHILD = """
import sys, time, torch
sys.path.insert(0, sys.argv[1])
import modules
torch.manual_seed(0)
a = dict(img_resolution=int(sys.argv[2]), img_channels=1, channel_base=int(sys.argv[3]), channel_max=int(sys.argv[4]))
G = modules.Generator(mapping_layers=int(sys.argv[5]), **a)
D = modules.Discriminator(**a)
passes = network_passes(G, D, int(sys.argv[6]), torch.device("cpu"))
for fn in passes.values():
    fn()
out = {}
for p, fn in passes.items():
    ts = []
    for r in range(int(sys.argv[7])):
        torch.manual_seed(r)
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    out[p] = sorted(ts)[len(ts) // 2]
print(repr(out))
"""


def bench_networks_against(args) -> None:
    """This checkout against another (e.g. `git worktree add /tmp/old <commit>`), CPU: one fresh process per
    checkout and repetition, alternating (A B, B A, ...); each times every pass --iters times (median) after
    one warm-up call; medians over the repetitions."""
    import inspect
    import subprocess
    code = "import torch\nimport torch.nn.functional as F\n" + inspect.getsource(network_passes) + _AGAINST_CHILD
    repos = {"previous: " + args.against: os.path.abspath(args.against),
             "this checkout": os.path.dirname(os.path.abspath(__file__))}
    times = {name: [] for name in repos}
    for rep in range(args.reps):
        for name in (list(repos) if rep % 2 == 0 else list(repos)[::-1]):
            out = subprocess.run([sys.executable, "-c", code, repos[name], str(args.resolution), str(args.channel_base),
                                  str(args.channel_max), str(args.mapping_layers), str(args.batch), str(args.iters)],
                                 capture_output=True, text=True, check=True, cwd=repos[name]).stdout
            times[name].append(eval(out.strip().splitlines()[-1]))
    print(f"{args.reps} alternating processes per checkout, each {args.iters} timed calls per pass after 1 warm-up; "
          f"medians of the per-process medians (fp32, {torch.get_num_threads()} threads in this process; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    a, b = list(repos)
    print(f"| pass | {a} ms | {b} ms | speed-up |")
    print("|---|---:|---:|---:|")
    for p in times[a][0]:
        ta, tb = median([t[p] for t in times[a]]), median([t[p] for t in times[b]])
        print(f"| {p} | {ta * 1e3:.1f} | {tb * 1e3:.1f} | {ta / tb:.2f}x |", flush=True)


def demo_slices(data, split: str, resolution: int = 256) -> torch.Tensor:
    """float [N, 1, R, R] in [0, 1] from the demo data (built if missing) or --data."""
    ds = dataset.ImageDataset(data or demo.ensure_demo(), split=split, resolution=resolution, log=lambda m: None)
    return torch.from_numpy(ds.images).float() / 255


def jittered(images: torch.Tensor, count: int, seed: int, shift: int = 8) -> torch.Tensor:
    """`count` distinct images from a smaller set: cycled, randomly x-flipped and rolled by up to +-shift px."""
    g = torch.Generator().manual_seed(seed)
    out = images[torch.arange(count) % len(images)].clone()
    flip = torch.rand(count, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    shifts = torch.randint(-shift, shift + 1, (count, 2), generator=g)
    for i in range(count):
        out[i] = out[i].roll(tuple(shifts[i].tolist()), dims=(-2, -1))
    return out


def bench_ssim(args) -> None:
    """metrics.ssim against a scikit-image loop, and the nearest-real search at scale with its miss rate."""
    import metrics
    from skimage.metrics import structural_similarity
    device = config.resolve_device(args.device)
    train_slices, held = demo_slices(args.data, "train"), demo_slices(args.data, "validate")
    a, b = train_slices[:args.pairs], train_slices.roll(1, 0)[:args.pairs]
    start = time.perf_counter()
    ref = [structural_similarity(x[0].double().numpy(), y[0].double().numpy(), data_range=1, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False) for x, y in zip(a, b)]
    sk_s = (time.perf_counter() - start) / len(ref)
    ad, bd = a.to(device), b.to(device)
    torch_s = timed(lambda: torch.cat([metrics.ssim(ad[i:i + 64], bd[i:i + 64]) for i in range(0, len(ad), 64)]),
                    3, 1, device) / len(ad)
    err = (metrics.ssim(a.double(), b.double()) - torch.tensor(ref, dtype=torch.float64)).abs().max().item()
    queries = jittered(held, args.queries, seed=1).to(device)
    references = jittered(train_slices, args.references, seed=2).to(device)
    start = time.perf_counter()
    best, index = metrics.nearest_ssim(queries, references, candidates=args.candidates)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    search_s = time.perf_counter() - start
    q = queries[:args.miss_queries]                              # exhaustive search on a subset: the true best
    start = time.perf_counter()
    true_best, true_index = metrics.nearest_ssim(q, references, candidates=None)
    exhaustive_s = (time.perf_counter() - start) / len(q) * len(queries)
    missed = best[:len(q)] < true_best - 1e-6
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()} ({len(os.sched_getaffinity(0))} cores)"
    print(f"device: {name} | torch {torch.__version__} | 256x256 demo slices")
    print("| measurement | result |")
    print("|---|---:|")
    print(f"| scikit-image structural_similarity, one pair at a time (float64) | {1 / sk_s:,.0f} pairs/s |")
    print(f"| metrics.ssim, batches of 64 (float32) | {1 / torch_s:,.0f} pairs/s ({sk_s / torch_s:.0f}x) |")
    print(f"| largest difference from scikit-image (float64, {len(ref)} pairs) | {err:.1e} |")
    print(f"| nearest-real SSIM, {len(queries):,} x {len(references):,}, 256 by L2 at 32 px, {args.candidates} by SSIM at 64 px "
          f"| {search_s:.1f} s |")
    print(f"| the same without prefilter (extrapolated from {len(q)} queries) | {exhaustive_s:,.0f} s |")
    print(f"| prefilter missed the true nearest ({len(q)} queries searched exhaustively) | {int(missed.sum())} of "
          f"{len(q)}; largest SSIM shortfall {(true_best - best[:len(q)]).max().item():.4f} |")


def bench_networks_cli(args) -> None:
    for p in args.precision.split(","):
        if p not in ("fp32", "bf16"):
            raise config.ConfigError(f"--precision: unknown value {p!r}; use fp32 and/or bf16")
    for m in args.modconv.split(","):
        if m not in ("fused", "unfused"):
            raise config.ConfigError(f"--modconv: unknown value {m!r}; use fused and/or unfused")
    device = config.resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    try:
        conv_clamp = 256 if "bf16" in args.precision else None
        G = Generator(img_resolution=args.resolution, img_channels=args.img_channels, mapping_layers=args.mapping_layers,
                      channel_base=args.channel_base, channel_max=args.channel_max, conv_clamp=conv_clamp).to(device)
        D = Discriminator(img_resolution=args.resolution, img_channels=args.img_channels, channel_base=args.channel_base,
                          channel_max=args.channel_max, conv_clamp=conv_clamp).to(device)
    except ValueError as e:
        raise config.ConfigError(str(e)) from None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {name} | torch {torch.__version__} | {args.resolution} px x{args.img_channels}, batch {args.batch}, "
          f"G {count_params(G):,} / D {count_params(D):,} params, conv_clamp {conv_clamp}"
          f"{', TF32 allowed for fp32' if device.type == 'cuda' else ''}")
    if args.against:
        bench_networks_against(args)
        return
    print("| precision | modconv | generation img/s | G+D fwd+bwd img/s | peak GiB (fwd+bwd) | G error vs fp64 |")
    print("|---|---|---:|---:|---:|---:|")
    for precision in args.precision.split(","):
        for modconv in args.modconv.split(","):
            r = bench_networks(G, D, args.batch, device, precision, modconv == "fused", args.iters, args.warmup)
            print(f"| {r['precision']} | {r['modconv']} | {r['gen_img_s']:.1f} | {r['step_img_s']:.1f} "
                  f"| {'-' if r['peak_gib'] != r['peak_gib'] else format(r['peak_gib'], '.2f')} | {r['error']:.1e} |", flush=True)


def bench_summary(args) -> None:
    """The G and D layer tables (modules.summary_rows) and parameter counts; no timing."""
    try:
        G = Generator(img_resolution=args.resolution, img_channels=args.img_channels,
                      mapping_layers=args.mapping_layers, channel_base=args.channel_base, channel_max=args.channel_max)
        D = Discriminator(img_resolution=args.resolution, img_channels=args.img_channels,
                          channel_base=args.channel_base, channel_max=args.channel_max)
    except ValueError as e:
        raise config.ConfigError(str(e)) from None
    print(f"{'layer':<24}{'output shape':<22}{'params':>12}")
    for net, name, shape, params in summary_rows(G, D):
        print(f"{net}.{name:<22}{shape:<22}{params:>12,}")
    print(f"\nG total {count_params(G):,} parameters    D total {count_params(D):,} parameters")
    print(f"num_ws = {G.num_ws}, mapping layers = {args.mapping_layers}")


def main(argv=None) -> int:
    """Exit codes: 0, 1 for bad data (one line), 2 for a usage error (one line)."""
    return errors.run_main(run, argv)


def add_network_size(parser) -> None:
    """The options that size G and D, shared by `summary` and `networks`."""
    parser.add_argument("--resolution", type=int, default=256, help="image resolution (power of two)")
    parser.add_argument("--img_channels", "--channels", type=int, default=1, help="image channels")
    parser.add_argument("--channel_base", type=int, default=16384, help="channel scale")
    parser.add_argument("--channel_max", type=int, default=512, help="max channels per layer")
    parser.add_argument("--mapping_layers", type=int, default=config.TrainConfig.mapping_layers,
                        help="mapping-network depth (as train.py's presets; 8 in the paper)")


def build_parser() -> config.Parser:
    top = config.Parser(prog="bench.py", description="Speed measurements and the networks' size summary "
                        "(see the module docstring).")
    sub = top.add_subparsers(dest="what", required=True)
    add_network_size(sub.add_parser("summary", help="G and D layer tables and parameter counts"))
    net = sub.add_parser("networks", help="G and D: generation and fwd+bwd throughput, memory, bf16 error")
    add_network_size(net)
    net.add_argument("--batch", type=int, default=16, help="images per step")
    net.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    net.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    net.add_argument("--modconv", default="fused,unfused", help="comma list of fused, unfused")
    net.add_argument("--iters", type=int, default=20, help="timed iterations")
    net.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    net.add_argument("--against", default="", help="another checkout's folder (git worktree add /tmp/old <commit>): "
                     "the same passes in alternating processes, CPU (--reps processes each, --iters calls each)")
    net.add_argument("--reps", type=int, default=4, help="--against: processes per checkout")
    data = sub.add_parser("data", help="decode, cache and batch-serving speed of dataset.py")
    data.add_argument("--data", default=None, help="slices to copy (default: the demo data, built if missing)")
    data.add_argument("--images", type=int, default=10000, help="PNG files to decode")
    data.add_argument("--resolution", type=int, default=256, help="decode resolution")
    data.add_argument("--batch", type=int, default=32, help="images per served batch")
    data.add_argument("--workdir", default=None, help="where the temporary copies go (default: system temp)")
    aug = sub.add_parser("augment", help="cost of the augmentation pipe against a training iteration")
    aug.add_argument("--resolution", type=int, default=256, help="image resolution")
    aug.add_argument("--batch", type=int, default=32, help="images per batch")
    aug.add_argument("--pipeline", default="bgc", help="transform groups")
    aug.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    aug.add_argument("--iters", type=int, default=8, help="timed iterations")
    aug.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    aug.add_argument("--step_iters", type=int, default=1, help="timed calls of each training phase")
    aug.add_argument("--step_warmup", type=int, default=0, help="untimed calls of each training phase first")
    tr = sub.add_parser("train", help="training throughput of a preset: phases, images/s, FLOPs, MFU; "
                        "other --key=value options override the config as in train.py")
    tr.add_argument("--preset", default="oasis256" if torch.cuda.is_available() else "demo", help="config preset")
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    tr.add_argument("--p", type=float, default=0.2, help="augmentation probability held during the run")
    tr.add_argument("--iters", type=int, default=32, help="timed training iterations (a multiple of 16 "
                    "keeps the lazy-regularizer mix exact)")
    tr.add_argument("--phase_iters", type=int, default=3, help="timed calls of each phase alone")
    tr.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    tr.add_argument("--flops_only", action="store_true", help="count FLOPs per image and stop (no timing)")
    tr.add_argument("--profile", default="", help="comma list of phases (D,R1,G,PL) to profile once")
    tr.add_argument("--compile", action="store_true", help="eager and cfg.compile (train.py compiles G's "
                    "synthesis and D for the first-order steps) interleaved in one process: phases, images/s, "
                    "speed-up")
    tr.add_argument("--reps", type=int, default=3, help="--compile: interleaved repetitions (medians)")
    sim = sub.add_parser("ssim", help="metrics.ssim against scikit-image; nearest-real search at scale")
    sim.add_argument("--data", default=None, help="slices (default: the demo data, built if missing)")
    sim.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sim.add_argument("--pairs", type=int, default=256, help="pairs for the SSIM speed comparison")
    sim.add_argument("--queries", type=int, default=1000, help="query slices (jittered held-out demo slices)")
    sim.add_argument("--references", type=int, default=10000, help="reference slices (jittered training slices)")
    sim.add_argument("--candidates", type=int, default=16, help="prefilter candidates per query")
    sim.add_argument("--miss_queries", type=int, default=8, help="queries also searched exhaustively")
    return top


def run(argv=None) -> None:
    top = build_parser()
    args, extra = top.parse_known_args(argv)
    if extra and args.what != "train":
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    args.set = extra                                # train: any other --key=value is a config override
    if args.what == "summary":
        bench_summary(args)
    elif args.what == "train":
        bench_train(args)
    elif args.what == "ssim":
        bench_ssim(args)
    elif args.what == "augment":
        bench_augment(args)
    elif args.what == "networks":
        bench_networks_cli(args)
    else:
        bench_data(args)


if __name__ == "__main__":
    sys.exit(main())
