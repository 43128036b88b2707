"""Benchmarks (issue #8): the pipeline, its baselines, its footprint and the HTTP service, measured side by
side in the same run. Run them from the repository root as modules (`python -m bench.pipeline --help`);
each prints its figures and writes JSON (and plots) under bench/results/. BENCHMARKS.md records them."""
