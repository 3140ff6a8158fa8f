"""Benchmark tools: speed (`python -m dam3d.benchmarks.speed`), refresh overhead (`python -m dam3d.benchmarks.refresh`), and `dam3d bench make` (labelled benchmarks from 3D models)."""
