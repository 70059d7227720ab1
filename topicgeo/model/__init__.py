"""TopicGeo network modules."""

from topicgeo.model.topicgeo import CoarseMatches, EncodedImage, FineMatches, MatchResult, TopicGeo

__all__ = ["CoarseMatches", "EncodedImage", "FineMatches", "MatchResult", "TopicGeo"]
