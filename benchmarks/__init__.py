"""flash_triton's benchmark suite: ``python -m benchmarks.run`` (see ``benchmarks/run.py``); ``gpu_check.sh`` for
a GPU machine; the latest numbers per device in ``RESULTS.md``, their rows and plots under ``results/``."""
