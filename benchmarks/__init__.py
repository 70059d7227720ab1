"""Benchmarks of TopicGeo Edge: ``edge_bench`` (accuracy, speed and memory against peer matchers) and map builds."""
