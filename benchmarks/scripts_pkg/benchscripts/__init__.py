"""Scripts for the benchmarks."""
