"""Step 5: the index, pure sampling and constraints, subsets and their reports."""
