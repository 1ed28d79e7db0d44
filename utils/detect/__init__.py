"""Step 4: open-vocabulary detectors, the tracker, and parse_tracks."""
