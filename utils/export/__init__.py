"""export_tracks.py: a curated subset exported as evaluator-ready SOT sequences or WebDataset shards."""
