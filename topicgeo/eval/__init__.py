"""Evaluation of retrieval + matching with the numerics the vehicle runs (edge_runtime.numerics)."""
