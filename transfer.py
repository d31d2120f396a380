"""Transfer learning: start a new run from another checkpoint's weights, and Freeze-D.

Owns `train.py --init_from CHECKPOINT` (which network shape the new run takes, how the source tensors are
copied, and the RGB -> grayscale rule) and `--freeze_d N` (which of D's layers are frozen). Does not own the
checkpoint format (runs.py), the training loop (train.py, trainer.py) or the networks (modules.py).

What carries over: G, D and G_ema weights and buffers (w_avg included). What starts fresh: the optimizers'
moments, the image counter, ADA's p, the path-length mean and the data order, as in StyleGAN2-ADA's transfer
learning. Shapes follow the source: the architecture options the user did not type (resolution, channel
widths, mapping depth, z_dim, w_dim; with a masked source also the mask's form, mask_encoding and mask_head)
are taken from the source's config.

RGB -> grayscale (a 3-channel source, e.g. a converted official release, into a 1-channel run):
  G's ToRGB rows become one row, their luma combination 0.299 R + 0.587 G + 0.114 B (weights and biases).
      ToRGB is linear in its rows and the skip generator sums the ToRGB outputs, so the new G outputs exactly
      the luma of the source's RGB image.
  D's FromRGB columns are summed (and rescaled for the equalized learning rate's fan-in): the new D sees a
      gray image as the source D sees that image copied into R, G and B.
Any other shape that differs is refused with a line naming the tensor.
"""

import dataclasses

import torch

import config as config_lib
import runs

LUMA = (0.299, 0.587, 0.114)            # ITU-R BT.601 weights of R, G, B in the gray value
TAKEN_FROM_SOURCE = ("resolution", "z_dim", "w_dim", "mapping_layers", "d_mapping_layers", "channel_base",
                     "channel_max", "label_encoding")


def load_source(path: str):
    """(state, its TrainConfig, the file) of the checkpoint --init_from names: any checkpoint of this project
    with G and G_ema (a run folder, a snapshot, checkpoint.pt or a convert.py output)."""
    file = runs.resolve_checkpoint(path, "--init_from")
    state = runs.load_checkpoint(file, "--init_from", need=("G", "G_ema"))
    return state, runs.checkpoint_config(state, file), file


# The official resume branch fine-tunes with ADA at 100 kimg and no EMA ramp-up (the ADA paper's transfer
# recipe; official StyleGAN2-ADA train.py, resume settings). Options the user types win.
TRANSFER_RECIPE = {"ada_kimg": 100.0, "ema_rampup": 0.0}


def config_for(cfg, given: dict, source_cfg):
    """cfg with the source's network shape for every architecture option the user did not type, and the
    transfer recipe (TRANSFER_RECIPE) for each of its options the user did not type."""
    keep = {k: getattr(source_cfg, k) for k in TAKEN_FROM_SOURCE if k not in given}
    if source_cfg.masks:                                    # a masked source's mask form, not today's defaults
        keep.update({k: getattr(source_cfg, k) for k in ("mask_encoding", "mask_head") if k not in given})
    recipe = {k: v for k, v in TRANSFER_RECIPE.items() if k not in given}
    return dataclasses.replace(cfg, **keep, **recipe)


def recipe_line(cfg, given: dict) -> str:
    """The log line naming the fine-tuning values in use and where each came from."""
    parts = [f"{k} {getattr(cfg, k):g} ({'given' if k in given else 'transfer recipe'})" for k in TRANSFER_RECIPE]
    return "--init_from: fine-tuning with " + ", ".join(parts)


def adapt(name: str, tensor: torch.Tensor, shape: torch.Size, source_channels: int, channels: int) -> torch.Tensor:
    """The source tensor for a target of `shape`: itself, or its RGB -> gray form; else None."""
    if tensor.shape == shape:
        return tensor
    if (source_channels, channels) != (3, 1):
        return None
    luma = torch.tensor(LUMA, dtype=tensor.dtype)
    if name.endswith("torgb.weight") and tensor.shape[0] == 3:          # [3, I, 1, 1] -> [1, I, 1, 1]
        out = (luma.view(3, 1, 1, 1) * tensor).sum(0, keepdim=True)
    elif name.endswith("torgb.bias") and tensor.shape == (3,):          # [3] -> [1]
        out = (luma * tensor).sum(0, keepdim=True)
    elif name.endswith("fromrgb.weight") and tensor.ndim == 4 and tensor.shape[1] == 3:
        # Stored weights are scaled at run time by 1/sqrt(fan_in) (equalized learning rate): fan_in drops from
        # 3 to 1, so the summed column is multiplied by sqrt(1/3) to keep the effective weights.
        out = tensor.sum(1, keepdim=True) * (1 / 3) ** 0.5             # [O, 3, 1, 1] -> [O, 1, 1, 1]
    else:
        return None
    return out if out.shape == shape else None


def init_networks(nets: dict, state: dict, source_cfg, path, cfg, log=print) -> None:
    """Copy the source's G, D and G_ema into nets ({"G": ..., "D": ..., "G_ema": ...}). A source without D
    leaves D as initialised (with a note). Every tensor of the target must be found in the source with a
    shape that matches or adapts; else one RunError line names it."""
    adapted = set()
    for key, net in nets.items():
        if key not in state:
            log(f"note: --init_from {path} has no {key}; {key} starts from random weights")
            continue
        source = state[key]
        target = net.state_dict()
        new = {}
        for name, t in target.items():
            if name not in source:
                raise runs.RunError(f"--init_from {path}: {key}.{name} is not in the checkpoint; its network differs "
                                    f"from this run's (--masks, --cond or the architecture); start from a matching one")
            value = adapt(name, source[name], t.shape, source_cfg.img_channels, cfg.img_channels)
            if value is None:
                raise runs.RunError(f"--init_from {path}: {key}.{name} has shape {list(source[name].shape)} in the "
                                    f"checkpoint but {list(t.shape)} in this run's network; give the source's "
                                    f"options (see its config) or start from a matching checkpoint")
            if value is not source[name]:
                adapted.add(name)
            new[name] = value.to(t.dtype)
        extra = sorted(set(source) - set(target))
        if extra:
            raise runs.RunError(f"--init_from {path}: {key}.{extra[0]} has no place in this run's network "
                                f"(--masks, --cond or the architecture differ); start from a matching checkpoint")
        net.load_state_dict(new)
    if adapted:
        log(f"--init_from: RGB -> gray for {len(adapted)} tensor(s) (ToRGB rows by luma {LUMA}, FromRGB columns "
            f"summed)")


# ----------------------------------------------------------------------------------------------
# Freeze-D

def d_layers(D) -> list:
    """D's layers in Freeze-D order, from the image inwards: per block (highest resolution first) FromRGB,
    conv0, conv1, skip. The 4x4 epilogue and the label mapping are never frozen."""
    layers = []
    for res, block in D.blocks.items():
        for name in ("fromrgb", "conv0", "conv1", "skip"):
            layer = getattr(block, name)
            if layer is not None:
                layers.append((f"blocks.{res}.{name}", layer))
    return layers


def freeze_d(D, count: int) -> list:
    """Stop training D's first `count` layers (requires_grad False). Returns the trainable parameters, the
    ones the training loop may switch back on."""
    layers = d_layers(D)
    if not 0 <= count <= len(layers):
        raise config_lib.ConfigError(f"--freeze_d={count}: this D has {len(layers)} layers that can be frozen "
                                     f"(0 to {len(layers)})")
    frozen = {id(p) for _, layer in layers[:count] for p in layer.parameters()}
    for p in D.parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
    return [p for p in D.parameters() if id(p) not in frozen]
