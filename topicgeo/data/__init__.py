"""Training and evaluation data: georeferenced rasters, query synthesis with exact homographies, cross-date pairs.

Torch-free (numpy, OpenCV, rasterio, pyproj).
"""

from topicgeo.data.pairs import (
    MapSource,
    PairConfig,
    PairDataset,
    ReferenceWindow,
    TrainingPair,
    folder_sources,
    load_split_ids,
    mtgl_sources,
    naip_eval_pairs,
    naip_sources,
    sjer_eval_pairs,
    sjer_sources,
)
from topicgeo.data.raster import GeoRaster, RasterConfig, apply_homography, pixel_map_between
from topicgeo.data.synthesis import (
    NAIP_PROTOCOL,
    SJER_PROTOCOL,
    EvalProtocol,
    EvalQuery,
    QuerySynthesisConfig,
    SynthesizedQuery,
    evaluation_queries,
    synthesize_query,
    texture_score,
)

__all__ = [
    "NAIP_PROTOCOL",
    "SJER_PROTOCOL",
    "EvalProtocol",
    "EvalQuery",
    "GeoRaster",
    "MapSource",
    "PairConfig",
    "PairDataset",
    "QuerySynthesisConfig",
    "RasterConfig",
    "ReferenceWindow",
    "SynthesizedQuery",
    "TrainingPair",
    "apply_homography",
    "evaluation_queries",
    "folder_sources",
    "load_split_ids",
    "mtgl_sources",
    "naip_eval_pairs",
    "naip_sources",
    "pixel_map_between",
    "sjer_eval_pairs",
    "sjer_sources",
    "synthesize_query",
    "texture_score",
]
