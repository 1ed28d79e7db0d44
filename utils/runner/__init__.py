"""How every stage runs: the Stage contract, the run loop, journals, the CLI, Slurm, status."""
