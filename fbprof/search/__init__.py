"""fbprof.search."""
