"""Benchmark of the pipeline on the real data (``python -m bench``)."""
