"""What every node of a SLURM job runs before torchrun: `python -m harness.run.launchers.slurm_node check --head-node H
[--gpu A100 --gpus-per-node 8] --spec S --out DIR`. It checks that the job's head node name resolves on this node
(torchrun's rendezvous endpoint) and, with --gpu, this node's GPUs against the cell's; on a problem it writes the
cell's `result.json` (status `error`, the reason naming the node) and exits 1, so the runner that collects the job
records why."""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

from ...grid.hardware import detect, mismatch


def head_node_problem(name: str) -> str | None:
    """Why this node cannot reach the job's first node by name (torchrun's rendezvous endpoint), or None."""
    try:
        socket.getaddrinfo(name, None)
    except OSError as exc:
        return (f"the job's head node name {name!r} does not resolve on compute node {socket.gethostname()} "
                f"({exc.strerror or exc}); torchrun's rendezvous needs it: fix the nodes' DNS or /etc/hosts")
    return None


def check_in_job(args) -> int:
    """On each compute node before torchrun: the head node's name resolves here, and (with --gpu) the GPUs match."""
    problem = head_node_problem(args.head_node) if args.head_node else None
    if problem is None and args.gpu is not None:
        mismatched = mismatch(detect(), args.gpu, args.gpus_per_node)
        if mismatched is not None:
            problem = (f"hardware mismatch on compute node {socket.gethostname()}: {mismatched}; submit to a "
                       "partition with these GPUs (--sbatch-arg=--partition=...) and rerun with --force, or pass "
                       "--allow-hardware-mismatch")
    if problem is None:
        return 0
    from training_core.env import capture
    from training_core.result import RESULT_FILE, Outcome, build_row, write_json_atomic
    from training_core.spec import RunSpec

    spec = RunSpec.load(args.spec)
    row = build_row(run_id=spec.run_id, spec=spec.model_dump(mode="json"), outcome=Outcome(status="error",
                    reason=problem), env=capture(spec.world_size), process_start=time.time())
    write_json_atomic(Path(args.out) / RESULT_FILE, row)
    print(f"error: {problem}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.run.launchers.slurm_node")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check this node against a cell's hardware (inside a SLURM job)")
    check.add_argument("--gpu", help="the cell's GPU type (no GPU check without it)")
    check.add_argument("--gpus-per-node", type=int, default=1)
    check.add_argument("--head-node", help="the job's first node: its name must resolve here")
    check.add_argument("--spec", required=True, type=Path)
    check.add_argument("--out", required=True, type=Path, help="the cell directory (result.json on a mismatch)")
    args = parser.parse_args(argv)
    return check_in_job(args)


if __name__ == "__main__":
    raise SystemExit(main())
