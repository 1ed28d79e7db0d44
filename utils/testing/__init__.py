"""Synthetic videos, the example's detector, the ground-truth detector and MOT scoring, for tests, benchmarks and the example."""
