"""Speed of the StyleGAN2 networks on whatever device this runs on.

Owns timing only: it builds G and D from modules.py and measures generation and a forward+backward
pass of both networks (the core of a training step, without regularizers, augmentation or data).
Full training throughput belongs to the training loop; this file will grow to cover it.

    python bench.py --resolution 256 --batch 16 --device cuda
"""

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from modules import Discriminator, Generator, count_params


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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Time the StyleGAN2 networks (generation and G+D fwd/bwd).")
    parser.add_argument("--resolution", type=int, default=256, help="image resolution")
    parser.add_argument("--channels", type=int, default=1, help="image channels")
    parser.add_argument("--batch", type=int, default=16, help="images per step")
    parser.add_argument("--channel_base", type=int, default=16384, help="channel scale")
    parser.add_argument("--channel_max", type=int, default=512, help="max channels")
    parser.add_argument("--mapping_layers", type=int, default=2, help="mapping-network depth")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--modconv", default="fused,unfused", help="comma list of fused, unfused")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    args = parser.parse_args(argv)
    for p in args.precision.split(","):
        if p not in ("fp32", "bf16"):
            parser.error(f"--precision: unknown value {p!r}; use fp32 and/or bf16")
    for m in args.modconv.split(","):
        if m not in ("fused", "unfused"):
            parser.error(f"--modconv: unknown value {m!r}; use fused and/or unfused")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible; use --device cpu")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    try:
        conv_clamp = 256 if "bf16" in args.precision else None
        G = Generator(img_resolution=args.resolution, img_channels=args.channels, mapping_layers=args.mapping_layers,
                      channel_base=args.channel_base, channel_max=args.channel_max, conv_clamp=conv_clamp).to(device)
        D = Discriminator(img_resolution=args.resolution, img_channels=args.channels, channel_base=args.channel_base,
                          channel_max=args.channel_max, conv_clamp=conv_clamp).to(device)
    except ValueError as e:
        parser.error(str(e))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {name} | torch {torch.__version__} | {args.resolution} px x{args.channels}, batch {args.batch}, "
          f"G {count_params(G):,} / D {count_params(D):,} params, conv_clamp {conv_clamp}"
          f"{', TF32 allowed for fp32' if device.type == 'cuda' else ''}")
    print("| precision | modconv | generation img/s | G+D fwd+bwd img/s | peak GiB (fwd+bwd) | G error vs fp64 |")
    print("|---|---|---:|---:|---:|---:|")
    for precision in args.precision.split(","):
        for modconv in args.modconv.split(","):
            r = bench_networks(G, D, args.batch, device, precision, modconv == "fused", args.iters, args.warmup)
            print(f"| {r['precision']} | {r['modconv']} | {r['gen_img_s']:.1f} | {r['step_img_s']:.1f} "
                  f"| {'-' if r['peak_gib'] != r['peak_gib'] else format(r['peak_gib'], '.2f')} | {r['error']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
