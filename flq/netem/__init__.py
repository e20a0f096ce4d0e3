"""Network emulation for benchmarks and real-clock deployments on one Linux host (root)."""
