"""Stage 2, the run: a grid's cells through a launcher, each a torchrun process group of its own, into rows.

- `options`: what a run was asked to do, and each launcher's slice of it;
- `prepare`: everything checked before a run starts (a refusal, or nothing);
- `runner`: the cells in order, resumed, interrupted, predicted, recorded;
- `launchers/`: local (torchrun here) and slurm (one sbatch job per cell), behind one interface (base.py);
- `command`: every command line a cell runs (torchrun local, multi-node and under SLURM; the in-job node check);
- `child`: the runner's other child processes (the environment capture, memory predictions);
- `console`: what a run prints; `proctree`: a cell's process tree, recorded and ended.
"""
