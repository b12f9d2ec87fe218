"""Helpers of tools/benchmark.py: contenders, interleaved timing, peak memory, multiply-adds, input pipeline."""
