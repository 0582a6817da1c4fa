"""Latency harnesses: the same timing loop and results schema on the host and on devices."""
