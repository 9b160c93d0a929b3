"""The old path of the in-job node check, for SLURM jobs queued before the move: harness/run/launchers/slurm_node.py."""

from harness.run.launchers.slurm_node import main

if __name__ == "__main__":
    raise SystemExit(main())
