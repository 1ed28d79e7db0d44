"""The TrackVerse pipeline library: one subpackage per pipeline step (README "Library map")."""
