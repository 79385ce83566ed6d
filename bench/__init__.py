"""Benchmarks that print ratios against a reference run side by side."""
