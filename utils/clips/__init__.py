"""Steps 4a and 7: clip geometry, one-pass cutting, and rebuilding released subsets."""
