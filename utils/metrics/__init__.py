"""Step 5a: per-track motion and appearance metrics."""
