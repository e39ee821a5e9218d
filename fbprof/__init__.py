"""fbprof: measure operator latency on real devices and search hardware-aware networks (FBNet)."""

__version__ = "0.1.0"
