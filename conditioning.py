"""The labels a conditional generator is asked for when it samples (predict.py): --class, --label and --slice
checked against what the model was trained on, and each seed's seeded draw without them.

Owns the rule seeds -> labels [N, c_dim] and the one-line refusals of those options (config_lib.ConfigError,
exit code 2). Does not own the training data's labels (dataset.py), the stored encoding and range of a
model's labels (config.py) or sampling (predict.py).
"""

import math

import numpy as np
import torch

import config as config_lib


def trained_ranges(cfg, names: list) -> list:
    """(lo, hi) of each label that the model saw in training, or None where that is unknown. A stored
    label_range is the training data's range; without one a slice position lies in [0, 1], and so does every
    Fourier-encoded label (train.py stores a range when one leaves [0, 1]). Labels of a class model, or of a
    converted official network, have no known range."""
    ranges = config_lib.label_ranges(cfg)
    if ranges:
        return ranges
    fourier = config_lib.label_encoding(cfg) == "fourier"
    return [(0.0, 1.0) if fourier or name == "slice_position" else None for name in names]


def parse_label(text: str, cfg, names: list) -> list:
    """--label v1,v2,...: c_dim finite numbers, each inside the range the model was trained on where known
    (a slice-position or covariate model)."""
    usage = config_lib.ConfigError
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise usage(f"--label {text!r}: give {cfg.c_dim} numbers separated by commas") from None
    if len(values) != cfg.c_dim:
        raise usage(f"--label {text!r}: this model takes {cfg.c_dim} value(s) ({', '.join(names)}), got {len(values)}")
    check_values(values, names, trained_ranges(cfg, names), f"--label {text!r}")
    return values


def check_values(values: list, names: list, ranges: list, said: str) -> None:
    """Each value finite and inside its trained range (None: unknown), else one line starting with said."""
    for name, value, bounds in zip(names, values, ranges):
        if not math.isfinite(value):
            raise config_lib.ConfigError(f"{said}: {name} must be a finite number, got {value}")
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise config_lib.ConfigError(f"{said}: {name} {value:g} is outside [{bounds[0]:g}, {bounds[1]:g}], the "
                                         f"range this model was trained on")


def stack_covariates(cfg, text: str) -> list:
    """--covariates name=v,...: the values of every label after slice_position of a stack's model (a
    dataset.py slices --csv model), by name, each checked as --label checks it; [] for a position-only model."""
    usage = config_lib.ConfigError
    names = cfg.label_names.split(",") if cfg.label_names else []
    wanted = names[1:]
    if not wanted:
        if text:
            raise usage(f"--covariates {text!r}: this model is conditioned on the slice position alone")
        return []
    if not text:
        raise usage(f"this model is also conditioned on {', '.join(wanted)}; give --covariates "
                    + ",".join(f"{n}=V" for n in wanted) + " (the values as in the training CSV)")
    given = {}
    for part in text.split(","):
        name, eq, value = part.partition("=")
        if not eq or name.strip() not in wanted or name.strip() in given:
            raise usage(f"--covariates {text!r}: give each of {', '.join(wanted)} once as name=value")
        given[name.strip()] = value.strip()
    missing = [n for n in wanted if n not in given]
    if missing:
        raise usage(f"--covariates {text!r}: {', '.join(missing)} missing; this model takes {', '.join(wanted)}")
    try:
        values = [float(given[n]) for n in wanted]
    except ValueError:
        raise usage(f"--covariates {text!r}: every value must be a number") from None
    check_values(values, wanted, trained_ranges(cfg, names)[1:], f"--covariates {text!r}")
    return values


def label_rule(cfg, args):
    """seeds -> labels [N, c_dim] for a conditional model, from --class, --label or --slice; without them a
    slice-position model draws each seed's position uniformly in [0, 1] and a class model each seed's class
    (both seeded by the seed). None for an unconditional model. Wrong options are one ConfigError line; argparse
    lets at most one of the three through."""
    usage = config_lib.ConfigError
    given = {k: v for k, v in (("--class", args.class_), ("--label", args.label), ("--slice", args.slice))
             if v is not None}
    names = cfg.label_names.split(",") if cfg.label_names else [f"label_{i}" for i in range(cfg.c_dim)]
    if not cfg.c_dim:
        if given:
            raise usage(f"{', '.join(given)}: this model is unconditional (trained with --cond=none)")
        return None
    classes = all(n.startswith("class_") for n in names)
    fixed = None
    if "--label" in given:
        fixed = parse_label(args.label, cfg, names)
    elif "--class" in given:
        if not classes or not 0 <= args.class_ < cfg.c_dim:
            raise usage(f"--class {args.class_}: this model's labels are {', '.join(names)}; "
                        + (f"give a class 0..{cfg.c_dim - 1}" if classes else "use --label or --slice"))
        fixed = [float(i == args.class_) for i in range(cfg.c_dim)]
    elif "--slice" in given:
        if names != ["slice_position"] or not 0 <= args.slice <= 1:
            raise usage(f"--slice {args.slice}: " + ("give a position in [0, 1] (0 = lowest slice)"
                                                     if names == ["slice_position"] else
                                                     f"this model's labels are {', '.join(names)}; use --label"))
        fixed = [args.slice]
    if fixed is not None:
        return lambda seeds: torch.tensor([fixed] * len(seeds), dtype=torch.float32)
    if names == ["slice_position"]:
        return lambda seeds: torch.tensor([[np.random.default_rng([s, 1]).random()] for s in seeds],
                                          dtype=torch.float32)
    if classes:
        return lambda seeds: torch.eye(cfg.c_dim)[[int(np.random.default_rng([s, 1]).integers(cfg.c_dim))
                                                   for s in seeds]]
    raise usage(f"this model is conditional on {', '.join(names)}; give --label v1,...,v{cfg.c_dim}")
