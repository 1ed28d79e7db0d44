"""Relabel and search tracks by text: the track embeddings parse_tracks.py keeps, scored against a
new vocabulary (relabel_tracks.py) or free-text queries (search_tracks.py), on a CPU."""
