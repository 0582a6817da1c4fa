"""Structured channel pruning with Torch-Pruning (dependency graph + pluggable importance)."""
