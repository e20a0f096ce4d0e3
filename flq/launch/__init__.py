"""Real deployments from one experiment file: on this host (``flq launch``), on Slurm, with Compose."""
