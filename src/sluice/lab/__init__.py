"""Network-namespace labs used by tests, the demo and the benchmarks (addresses from 198.18.0.0/15)."""
