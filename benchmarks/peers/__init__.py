"""Peer baselines of edge-bench: SIFT, XFeat, XFeat + LighterGlue and LoFTR with tiled retrieval by RANSAC inliers."""
