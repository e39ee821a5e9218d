"""fbprof.lut."""
