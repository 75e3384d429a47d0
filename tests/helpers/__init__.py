"""Helpers shared by the tests: running the real ``ranksweep`` command, tiny overrides, curves, ports,
and the real services some tests start (PostgreSQL, a one-node SLURM cluster)."""
