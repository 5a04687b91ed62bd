"""Metric registry: each metric declares its direction, what it compares and its batch size,
and returns one score per sample. Aggregation happens in ``reports/``, never here."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from bench.registry import Registry

# What a metric may compare; an EvalBatch field of the same name holds it.
INPUTS = ("results", "sources", "targets", "references", "instructions")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    compares: tuple[str, ...]      # subset of INPUTS
    batch_size: int = 64
    role: str | None = None        # the paper column this metric stands in for, if any
    synthetic: bool = False        # computed from the synthetic world's exact ground truth
    description: str = ""
    unit: str = ""                 # what one value is measured in, for table headers ("dB", "share 0-1")
    ideal: float | None = None     # a ratio whose right value is this (1): closer is better, either side


@dataclass
class EvalBatch:
    """One batch of edits to score; images are (B, 3, H, W) in [0, 1]."""

    results: torch.Tensor
    sources: torch.Tensor
    instructions: list[str]
    targets: torch.Tensor | None = None      # exact ground truth (synthetic world only)
    references: torch.Tensor | None = None   # the effect's reference template result
    reference_sources: torch.Tensor | None = None  # the template's source (BCR shows the template pair)
    criteria: list[str] | None = None        # expert criteria of the effect, per sample (BCR)
    # The exact output distribution of a stochastic effect (synthetic world; metrics.modes):
    variants: torch.Tensor | None = None     # (B, K, 3, H, W): the effect's K modes on each source
    mode_means: torch.Tensor | None = None   # (B, 3, H, W): E[effect(source)]
    expected_energy: torch.Tensor | None = None    # (B,): E high-pass energy of (y - mean), y one exact draw
    expected_pairwise: torch.Tensor | None = None  # (B,): E MAE(y, y') of two independent draws
    groups: torch.Tensor | None = None       # (B,): which test source a sample is a draw of

    def __len__(self) -> int:
        return self.results.shape[0]

    def slice(self, start: int, stop: int) -> "EvalBatch":
        return dataclasses.replace(self, **{f.name: None if getattr(self, f.name) is None
                                            else getattr(self, f.name)[start:stop]
                                            for f in dataclasses.fields(self)})


class MetricUnavailable(RuntimeError):
    """A metric cannot run here (missing weights, missing ground truth); the message says why."""


@dataclass
class SampleScores:
    """One score per sample and what became of it: ``ok``, ``parse_failure`` (a judge's answer was
    unusable) or ``missing`` (no answer, e.g. the judge endpoint failed), with the reason."""

    values: list[float]
    status: list[str]
    notes: list[str]

    @classmethod
    def ok(cls, values: list[float]) -> "SampleScores":
        return cls(list(values), ["ok"] * len(values), [""] * len(values))


class Metric(ABC):
    info: MetricInfo

    @abstractmethod
    def _score(self, batch: EvalBatch) -> torch.Tensor:
        """Scores of one batch no larger than ``info.batch_size``."""

    def check_inputs(self, batch: EvalBatch) -> None:
        for needed in self.info.compares:
            if getattr(batch, needed) is None:
                raise MetricUnavailable(f"{self.info.name} needs {needed}, which this dataset does not have")

    def score_samples(self, batch: EvalBatch) -> SampleScores:
        """Scores with a per-sample status; metrics whose samples can fail one by one (judges) override it."""
        return SampleScores.ok(self.score(batch))

    def score(self, batch: EvalBatch) -> list[float]:
        self.check_inputs(batch)
        out: list[float] = []
        for start in range(0, len(batch), self.info.batch_size):
            out.extend(self._score(batch.slice(start, start + self.info.batch_size)).tolist())
        return out


METRICS: Registry[type[Metric]] = Registry("metric")
# Exact, mode-aware metrics of the synthetic world's stochastic effects (metrics/modes.py).
METRICS.register("gt_mode_psnr", "metrics.modes:ModePSNR")
METRICS.register("gt_mode_mae", "metrics.modes:ModeMAE")
METRICS.register("mode_blur", "metrics.modes:ModeBlur")
METRICS.register("mode_coverage", "metrics.modes:ModeCoverage")
METRICS.register("diversity_ratio", "metrics.modes:DiversityRatio")
METRICS.register("texture_energy", "metrics.modes:TextureEnergy")
# Error to the one sampled target of each test row: it rewards the blurry mode mean, so it is
# kept for comparison only (no paper role).
METRICS.register("gt_psnr", "metrics.synthetic:GroundTruthPSNR")
METRICS.register("gt_mae", "metrics.synthetic:GroundTruthMAE")
METRICS.register("src_ssim", "metrics.synthetic:SourceSSIM")
# Synthetic stand-ins of the MLLM judge / reward model (exact ground truth; weight-free).
METRICS.register("vsa_syn", "metrics.judge_synthetic:SyntheticVSA")
METRICS.register("editreward_syn", "metrics.judge_synthetic:SyntheticEditReward")
METRICS.register("bcr_syn", "metrics.judge_synthetic:SyntheticBCR")
# The paper's metrics on real backends (weights resolved locally; "missing, and why" without them).
METRICS.register("clip", "metrics.clip:ClipScore")
METRICS.register("dino", "metrics.dino:DinoScore")
METRICS.register("dreamsim", "metrics.dreamsim:DreamSimDistance")
METRICS.register("vsa", "metrics.judge:VSAJudge")
METRICS.register("bcr", "metrics.judge:BCRJudge")
METRICS.register("editreward", "metrics.editreward:EditRewardScore")
