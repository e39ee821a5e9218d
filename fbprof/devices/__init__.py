"""fbprof.devices."""
