"""The on-disk formats every stage shares: track records, prompts, segment files, the index, metric files."""
