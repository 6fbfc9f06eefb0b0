"""Zippy evaluation pipelines and benchmarks (import name: zippy_eval)."""
