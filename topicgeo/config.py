"""Frozen, validated configuration of the TopicGeo network, with named presets.

``paper`` reproduces Table 1 of the supplement (20.63M parameters); ``cpu`` is a narrow variant that trains on a
2-core CPU. Configs are stored inside every checkpoint and bundle (:meth:`TopicGeoConfig.to_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

COARSE_STRIDE = 64
FINE1_STRIDE = 16
FINE2_STRIDE = 4
WINDOW = 4  # children per side of a cell at the next level: 64 -> 16 -> 4


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet-FPN with GroupNorm after a parameter-free 4x4 space-to-depth stem.

    Attributes:
        in_channels: image channels (RGB = 3; the stem sees ``in_channels * 16``).
        stage_channels: output channels of F1 (1/8), F2 (1/16), F3 (1/32), F4 (1/64).
        fpn_channels: channels of the FPN outputs; must equal ``stage_channels[-1]`` because F4_out = Fc feeds the
            top-down path directly (Table 1).
        gn_groups: GroupNorm groups (method.md decision 2).
    """

    in_channels: int = 3
    stage_channels: tuple[int, int, int, int] = (32, 64, 128, 256)
    fpn_channels: int = 256
    gn_groups: int = 8

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if len(self.stage_channels) != 4:
            raise ValueError(f"stage_channels needs 4 entries (1/8, 1/16, 1/32, 1/64), got {self.stage_channels}")
        if self.fpn_channels != self.stage_channels[-1]:
            raise ValueError("fpn_channels must equal stage_channels[-1] (F4_out = Fc enters the FPN directly)")
        for c in (*self.stage_channels, self.fpn_channels):
            if c % self.gn_groups:
                raise ValueError(f"{c} channels are not divisible by gn_groups={self.gn_groups}")


@dataclass(frozen=True)
class TopicConfig:
    """Topic module: SA branch on Fc, CA branch from Linear(Fc) to the prompt embeddings, fused by a Linear.

    Attributes:
        d_model: width of Fc and of the SA layers (= backbone fpn_channels).
        ca_dim: width of the CA branch (Linear[C:512] in the paper).
        n_heads: attention heads (both branches).
        n_sa_layers / n_ca_layers: depth of each branch (4 / 4 in the paper).
        prompt_dim: dimension D of the prompt embeddings (512 for CLIP ViT-B/32, 384 for MiniLM).
        n_prompts: number P of prompt tokens (6 categories + 25 attributes = 31).
        sa_attention: ``linear`` (LoFTR linear attention, scales to thousands of map cells) or ``full``.
        topic_temperature: temperature of the topic distribution used by the topic loss.
    """

    d_model: int = 256
    ca_dim: int = 512
    n_heads: int = 8
    n_sa_layers: int = 4
    n_ca_layers: int = 4
    prompt_dim: int = 512
    n_prompts: int = 31
    sa_attention: Literal["linear", "full"] = "linear"
    topic_temperature: float = 0.1

    def __post_init__(self) -> None:
        for name in ("d_model", "ca_dim"):
            if getattr(self, name) % self.n_heads:
                raise ValueError(f"{name}={getattr(self, name)} is not divisible by n_heads={self.n_heads}")
        if self.n_sa_layers < 1 or self.n_ca_layers < 1:
            raise ValueError("the topic module needs at least one SA and one CA layer")
        if self.prompt_dim < 1 or self.n_prompts < 1:
            raise ValueError(f"invalid prompt matrix shape ({self.n_prompts}, {self.prompt_dim})")
        if self.sa_attention not in ("linear", "full"):
            raise ValueError(f"sa_attention must be 'linear' or 'full', got {self.sa_attention!r}")
        if not self.topic_temperature > 0:
            raise ValueError("topic_temperature must be positive")


@dataclass(frozen=True)
class FineConfig:
    """Fine encoders 1 (1/16) and 2 (1/4): one SA + one CA layer each, full attention inside 4x4 windows.

    Attributes:
        d_model: feature width (= FPN channels).
        n_heads: attention heads.
    """

    d_model: int = 256
    n_heads: int = 8

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"fine d_model={self.d_model} is not divisible by n_heads={self.n_heads}")


@dataclass(frozen=True)
class MatchingConfig:
    """Test-time matching parameters (none of them changes the weights).

    Attributes:
        temperature: dual-softmax temperature tau at the coarse level (0.1).
        threshold: coarse confidence threshold theta_c (0.2).
        border: coarse cells removed at the image border (decision 8: 1 cell).
        mknn_k: MKNN window tolerance at coarse matching (k = 1; 0 = mutual nearest neighbour).
        max_coarse_matches: fixed number M of coarse matches passed to the fine stage (padded, with a mask).
        fine_temperature: dual-softmax temperature inside 4x4 windows.
        fine_threshold: confidence threshold inside windows.
        max_level2_windows: number of level-1 matches refined at level 2 (top by confidence); fixed output size.
        min_inliers: fewest geometry inliers for the vehicle to accept a fix (the locator's acceptance rule, applied
            to its refinement pass's fit); chosen per checkpoint on dev tuning queries by
            ``python -m benchmarks.acceptance`` (more inliers, fewer wrong fixes).
        min_first_pass_inliers: fewest inliers of the locator's first fit to accept it when its refinement falls
            short of ``min_inliers`` (None: never); calibrated together with ``min_inliers``.
    """

    temperature: float = 0.1
    threshold: float = 0.2
    border: int = 1
    mknn_k: int = 1
    max_coarse_matches: int = 128
    fine_temperature: float = 0.1
    fine_threshold: float = 0.05
    max_level2_windows: int = 512
    min_inliers: int = 12
    min_first_pass_inliers: int | None = None

    def __post_init__(self) -> None:
        if self.min_inliers < 4 or (self.min_first_pass_inliers is not None and self.min_first_pass_inliers < 4):
            raise ValueError(f"min_inliers and min_first_pass_inliers must be >= 4 (a homography needs 4 matches), "
                             f"got {self.min_inliers}, {self.min_first_pass_inliers}")
        if not (self.temperature > 0 and self.fine_temperature > 0):
            raise ValueError("temperatures must be positive")
        if not (0.0 <= self.threshold < 1.0 and 0.0 <= self.fine_threshold < 1.0):
            raise ValueError("thresholds must lie in [0, 1)")
        if self.border < 0 or self.mknn_k < 0:
            raise ValueError("border and mknn_k must be >= 0")
        if self.max_coarse_matches < 1 or self.max_level2_windows < 1:
            raise ValueError("max_coarse_matches and max_level2_windows must be >= 1")


@dataclass(frozen=True)
class TopicGeoConfig:
    """Whole-network configuration (the one stored in checkpoints and bundles)."""

    name: str = "paper"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    topic: TopicConfig = field(default_factory=TopicConfig)
    fine: FineConfig = field(default_factory=FineConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)

    def __post_init__(self) -> None:
        if self.topic.d_model != self.backbone.fpn_channels:
            raise ValueError(
                f"topic.d_model={self.topic.d_model} must equal backbone.fpn_channels={self.backbone.fpn_channels}"
            )
        if self.fine.d_model != self.backbone.fpn_channels:
            raise ValueError(
                f"fine.d_model={self.fine.d_model} must equal backbone.fpn_channels={self.backbone.fpn_channels}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TopicGeoConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error that names them."""
        sections = {"backbone": BackboneConfig, "topic": TopicConfig, "fine": FineConfig, "matching": MatchingConfig}
        unknown = set(raw) - {"name", *sections}
        if unknown:
            raise ValueError(f"unknown TopicGeoConfig keys: {sorted(unknown)}")
        kwargs: dict[str, Any] = {"name": raw.get("name", "custom")}
        for key, section_cls in sections.items():
            if key not in raw:
                continue
            values = dict(raw[key])
            allowed = {f.name for f in dataclasses.fields(section_cls)}
            bad = set(values) - allowed
            if bad:
                raise ValueError(f"unknown keys in config section {key!r}: {sorted(bad)}")
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            kwargs[key] = section_cls(**values)
        return cls(**kwargs)

    def with_matching(self, **changes: float) -> TopicGeoConfig:
        """Copy with test-time matching parameters replaced (e.g. ``threshold``, ``fine_threshold``); validated."""
        return dataclasses.replace(self, matching=dataclasses.replace(self.matching, **changes))

    def with_prompts(self, n_prompts: int, prompt_dim: int) -> TopicGeoConfig:
        """Copy whose topic module expects a ``(n_prompts, prompt_dim)`` prompt matrix."""
        return dataclasses.replace(
            self, topic=dataclasses.replace(self.topic, n_prompts=n_prompts, prompt_dim=prompt_dim)
        )


def _cpu_preset() -> TopicGeoConfig:
    return TopicGeoConfig(
        name="cpu",
        backbone=BackboneConfig(stage_channels=(16, 32, 64, 128), fpn_channels=128),
        topic=TopicConfig(d_model=128, ca_dim=256, n_heads=4, n_sa_layers=2, n_ca_layers=2, prompt_dim=384),
        fine=FineConfig(d_model=128, n_heads=4),
        matching=MatchingConfig(max_coarse_matches=64, max_level2_windows=256),
    )


PRESETS: dict[str, TopicGeoConfig] = {
    "paper": TopicGeoConfig(),
    "cpu": _cpu_preset(),
}


def get_preset(name: str) -> TopicGeoConfig:
    """Named preset; an unknown name is an error that lists the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}") from None


def coarse_grid(height: int, width: int) -> tuple[int, int]:
    """Coarse (1/64) grid of an image; the image sides must be multiples of 64."""
    if height % COARSE_STRIDE or width % COARSE_STRIDE or height <= 0 or width <= 0:
        raise ValueError(f"image size {height}x{width} must be a positive multiple of {COARSE_STRIDE}")
    return height // COARSE_STRIDE, width // COARSE_STRIDE


def fine_offset_scale(child_stride: int) -> float:
    """Pixel offset of a normalised window coordinate of +-1: (W - 1) / 2 child cells (even W = 4 -> 1.5 cells)."""
    return (WINDOW - 1) / 2.0 * child_stride


assert math.isclose(fine_offset_scale(4), 6.0)
