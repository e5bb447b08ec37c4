"""Benchmarks that print and write figures: ``python -m sctrain.bench {pipeline,scaling,latency} ...``."""
