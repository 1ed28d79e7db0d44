"""Steps 1-3a: download, scene segments, content filters, face blurring."""
