"""fbprof.profiler."""
