"""The scores of a sample of generated slices against real ones: the one path behind the scores train.py
tracks at snapshots (monitor.py) and those `predict.py score` writes.

Owns: the real side of the scores, computed once per real set (held-out nearest SSIM, the diversity of real
pairs, the reference's Inception features), the scores of a generated sample against it, the axial-level
coverage (OASIS names), the slice-position error of a model conditioned on the slice position, and the table
predict.py prints. Does not own the mathematics (metrics.py), reading the real sets (dataset.py), sampling
the generator (predict.py, monitor.py) or writing files (runs.py).
"""

import torch

import dataset
import metrics
import oasis

TABLE_ROWS = [("nearest-real SSIM, mean", "nearest_ssim_mean", "heldout_nearest_ssim_mean"),
              ("nearest-real SSIM, median", "nearest_ssim_median", "heldout_nearest_ssim_median"),
              ("nearest-real SSIM, mean over levels", "nearest_ssim_level_mean", "heldout_nearest_ssim_level_mean"),
              ("diversity: SSIM of pairs", "diversity_ssim", "real_diversity_ssim"),
              ("diversity: MS-SSIM of pairs", "diversity_ms_ssim", "real_diversity_ms_ssim"),
              ("memorization share", "memorization_share", None),
              ("axial levels covered (nearest real)", "level_coverage", "real_level_coverage"),
              ("axial-level spread (0 = even)", "level_spread", "real_level_spread"),
              ("slice position error (asked vs real)", "position_error", "real_position_error"),
              ("stacks: SSIM of neighbouring slices", "stack_ssim", "real_stack_ssim"),
              ("stacks: Dice of neighbouring outlines", "stack_outline_dice", "real_stack_outline_dice"),
              ("FID", "fid", None), ("KID", "kid", None)]


class Scorer:
    """Scores generated slices against one set of real slices. The real side is computed at the first call
    and kept, so a training run pays for it once."""

    def __init__(self, real: dataset.RealSets, device, inception=None, batch: int = 64, pairs: int = 500,
                 closest: int = 8, ms_ssim: bool = True, position_column: int = None):
        """real: dataset.reference_sets(); inception: a loaded TorchScript Inception-v3 (metrics.load_inception)
        to add FID and KID, or None; batch: images per Inception forward pass; pairs: random pairs for the
        diversity; closest: the closest (generated, real) pairs listed; ms_ssim: add the MS-SSIM diversity;
        position_column: the column of real.labels holding the slice position, for the position error."""
        self.real, self.device, self.inception, self.batch = real, device, inception, batch
        self.pairs, self.closest, self.ms_ssim, self.column = pairs, closest, ms_ssim, position_column
        self.levels = [oasis.slice_level(n) for n in real.names]                   # None for non-OASIS names
        self.baseline = self.reference_features = None

    def _unit(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, torch.float32) / 255                               # uint8 -> [0, 1]

    @torch.no_grad()
    def __call__(self, generated: torch.Tensor, asked=None) -> dict:
        """generated: uint8 [N, C, R, R]; asked: the slice position each was generated at ([N], with
        position_column). The dict of metrics.quality_scores (with its "closest", "nearest_index" and
        "heldout_nearest_index"), then, for OASIS names, nearest_ssim_level_mean and its held-out twin (the
        nearest-real SSIM averaged per level of the nearest real slice first), level_coverage, level_spread,
        real_level_coverage, real_level_spread and level_counts, then position_error and real_position_error
        when asked is given.
        A feature network that returns the wrong shape raises metrics.FeatureError."""
        real = self.real
        features = None
        if self.inception is not None:
            if self.reference_features is None:
                self.reference_features = metrics.inception_features(self.inception, real.reference, self.batch,
                                                                      self.device)
            features = (metrics.inception_features(self.inception, generated, self.batch, self.device),
                        self.reference_features)
        if self.baseline is None:
            self.baseline = metrics.real_baseline(self._unit(real.reference), self._unit(real.heldout), self.pairs,
                                                  self.ms_ssim)
        scores = metrics.quality_scores(self._unit(generated), self._unit(real.reference), self._unit(real.heldout),
                                        features, pairs=self.pairs, closest=self.closest, baseline=self.baseline,
                                        ms_ssim=self.ms_ssim)
        nearest, held_nearest = scores["nearest_index"], scores["heldout_nearest_index"]
        values, held_values = scores.pop("nearest_values"), scores.pop("heldout_nearest_values")
        if None not in self.levels:                    # OASIS names: axial levels of the nearest real slices
            generated_levels = [self.levels[i] for i in nearest]
            held_levels = [self.levels[i] for i in held_nearest]
            generated_cover = metrics.level_coverage(generated_levels, self.levels)
            real_cover = metrics.level_coverage(held_levels, self.levels)
            scores.update(nearest_ssim_level_mean=metrics.level_mean(values, generated_levels),
                          heldout_nearest_ssim_level_mean=metrics.level_mean(held_values, held_levels))
            scores.update({k: generated_cover[k] for k in ("level_coverage", "level_spread")},
                          real_level_coverage=real_cover["level_coverage"],
                          real_level_spread=real_cover["level_spread"], level_counts=generated_cover["level_counts"])
        if asked is not None and self.column is not None:   # asked slice position vs the nearest real slice's
            column = self.column
            scores.update(position_error=metrics.position_error(asked, real.labels[nearest, column]),
                          real_position_error=metrics.position_error(real.heldout_labels[:, column],
                                                                     real.labels[held_nearest, column]))
        return scores


def format_table(scores: dict) -> str:
    """The scores as the table predict.py prints: generated beside real, the rows that are there."""
    cell = lambda key: f"{scores[key]:.4f}" if key in scores else ""                 # noqa: E731
    lines = [f"{'':<36} {'generated':>10} {'real':>10}"]
    lines += [f"{label:<36} {cell(g):>10} {cell(r):>10}" for label, g, r in TABLE_ROWS if g in scores]
    lines.append("real: held-out slices against the training slices (nearest), training pairs (diversity)"
                 + (", the training subjects' slices in position order (stacks)" if "stack_ssim" in scores else ""))
    if "mixed_stack_ssim" in scores:
        lines.append(f"stacks of different seeds' slices (a floor): SSIM {scores['mixed_stack_ssim']:.4f}, outline "
                     f"Dice {scores['mixed_stack_outline_dice']:.4f}")
    return "\n".join(lines)
