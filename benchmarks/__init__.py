"""Benchmarks of flash_triton (run as ``python -m benchmarks.<name>`` from the repository root)."""
