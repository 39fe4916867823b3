"""Merging rank output into frontend output: streams, progress, rich results, bounds."""
