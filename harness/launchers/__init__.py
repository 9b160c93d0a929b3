"""Compatibility only: the launchers live in harness/run/launchers. This package keeps the old module path of the
in-job node check (`python -m harness.launchers.slurm_node`) that SLURM jobs queued before the move still name."""
