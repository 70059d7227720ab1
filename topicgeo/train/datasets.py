"""The training mixture: SJER cross-season plots and NAIP cross-year windows (splits in ``topicgeo/splits``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from topicgeo.data.pairs import PairConfig, PairDataset, TrainingPair, folder_sources, naip_sources, sjer_sources
from topicgeo.data.synthesis import QuerySynthesisConfig

SPLITS = Path(__file__).resolve().parent.parent / "splits"


class MixedPairs:
    """Interleaves several :class:`PairDataset` with integer weights (deterministic per index).

    Indices run through repeated blocks of the schedule (each part ``weight`` times, parts in name order). The
    ``k``-th occurrence of a part in block ``j`` draws its sample ``(j * weight + k) % len(part)``, so consecutive
    draws of one part walk through all of its samples. The length spans enough blocks for every part to draw each
    of its samples at least once (equally often, up to one, over the full length); a part's share of the indices
    is ``weight / sum(weights)``.
    """

    def __init__(self, parts: dict[str, PairDataset], weights: dict[str, int]) -> None:
        if not parts or set(parts) != set(weights) or min(weights.values()) < 1:
            raise ValueError("every part needs an integer weight >= 1")
        if min(len(p) for p in parts.values()) < 1:
            raise ValueError("every part needs at least one sample")
        self.parts = parts
        self.weights = weights
        self.schedule = [name for name, w in sorted(weights.items()) for _ in range(w)]
        seen: dict[str, int] = {}
        self._occurrence = []  # per schedule slot: how many earlier slots of the block hold the same part
        for name in self.schedule:
            self._occurrence.append(seen.get(name, 0))
            seen[name] = seen.get(name, 0) + 1
        self._blocks = max(-(-len(part) // weights[name]) for name, part in parts.items())

    def __len__(self) -> int:
        return self._blocks * len(self.schedule)

    def locate(self, index: int) -> tuple[str, int]:
        """``(part name, index in that part)`` of mixture index ``index``."""
        block, slot = divmod(int(index), len(self.schedule))
        name = self.schedule[slot]
        return name, (block * self.weights[name] + self._occurrence[slot]) % len(self.parts[name])

    def __getitem__(self, index: int) -> TrainingPair:
        name, local = self.locate(index)
        return self.parts[name][local]

    def describe(self) -> dict[str, Any]:
        """Sources, dates and sampling parameters (stored in checkpoints as the data manifest)."""
        return {
            name: {
                "weight": self.weights[name],
                "sources": [
                    {"map_id": s.map_id, "rasters": [p.name for p in s.rasters], "pairs": [list(p) for p in s.pairs()]}
                    for s in part.sources
                ],
                "config": dataclasses.asdict(part.config),
            }
            for name, part in self.parts.items()
        }


def build_training_dataset(
    sjer_root: str | None = None,
    sjer_split: str = str(SPLITS / "sjer_train.txt"),
    naip_root: str | None = None,
    naip_split: str = str(SPLITS / "naip.json"),
    query_size: int = 512,
    ref_size: int = 512,
    sjer_weight: int = 1,
    naip_weight: int = 1,
    samples_per_epoch: int = 10_000,
    seed: int = 0,
    sjer_side_fraction_range: tuple[float, float] = (0.4, 0.95),
    naip_side_range: tuple[float, float] = (90.0, 400.0),
    rotation_deg: tuple[float, float] = (0.0, 360.0),
    extra_root: str | None = None,
    extra_split: str = str(SPLITS / "extra_train.txt"),
    extra_weight: int = 1,
    extra_side_fraction_range: tuple[float, float] = (0.4, 0.95),
    hue: float = QuerySynthesisConfig.hue,
    saturation: float = QuerySynthesisConfig.saturation,
    ref_zoom_prob: float = 0.0,
) -> MixedPairs:
    """SJER (query side 0.4-0.95 of a plot) and NAIP (query side 90-400 px) pairs, references padded to ``ref_size``.

    ``extra_root`` adds the base maps of ``extra_split`` (:func:`~topicgeo.data.pairs.folder_sources` format, paths
    relative to ``extra_root``): single-date urban, forest and panchromatic maps whose queries are matched against
    the same raster, for textures that SJER's savanna and NAIP's prairie lack (roofs, roads, shorelines).

    ``rotation_deg`` narrows the query rotations for a curriculum stage (the vehicle de-rotates frames with its
    heading prior, so a CPU budget is better spent on scale and season than on the full circle).

    ``hue`` / ``saturation`` widen the queries' colour jitter (:class:`QuerySynthesisConfig`: a hue shift of
    ``U(-hue, hue)`` turns, a saturation factor of ``U(1 - s, 1 + s)``) for every part of the mixture.
    ``ref_zoom_prob`` shows the reference windows of small-footprint queries magnified 2x (:class:`PairConfig`), as
    a map cache's zoom-in level does.
    """
    rotation = (float(rotation_deg[0]), float(rotation_deg[1]))
    parts: dict[str, PairDataset] = {}
    weights: dict[str, int] = {}

    def add(name: str, sources: list, weight: int, seed_offset: int, **sides: Any) -> None:
        synth = QuerySynthesisConfig(query_size=query_size, rotation_deg=rotation, hue=hue, saturation=saturation,
                                     **sides)
        cfg = PairConfig(synthesis=synth, ref_size=ref_size, pad_mode="ref_size", ref_zoom_prob=ref_zoom_prob)
        parts[name] = PairDataset(sources, cfg, seed=seed + seed_offset, length=samples_per_epoch)
        weights[name] = weight

    if sjer_root:
        add("sjer", sjer_sources(sjer_root, sjer_split), sjer_weight, 0,
            side_fraction_range=tuple(sjer_side_fraction_range))
    if naip_root:
        add("naip", naip_sources(naip_root, naip_split, "train"), naip_weight, 1,
            side_range=tuple(naip_side_range), side_fraction_range=None)
    if extra_root:
        add("extra", folder_sources(extra_root, extra_split), extra_weight, 2,
            side_fraction_range=tuple(extra_side_fraction_range))
    if not parts:
        raise ValueError("build_training_dataset needs sjer_root, naip_root and/or extra_root")
    return MixedPairs(parts, weights)
