"""Speed measurements, each side by side with its natural baseline in one process.

Run them from the kit's folder as modules: ``python -m benchmarks.bench_vit_step --tiny``.
"""
