"""recipe-runner benchmarks: `python bench/run.py` (see bench/README.md). One module per figure."""
