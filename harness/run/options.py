"""What a run was asked to do (`RunOptions`, from `harness run`'s flags), and the slice of it each launcher gets:
a launcher sees its own options, never the runner's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Nodes:
    """This node's place in a multi-node run of the local launcher (a static rendezvous)."""
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500


@dataclass(frozen=True)
class LocalOptions:
    """The local launcher's slice: torchrun here, watched to its end."""
    nodes: Nodes = field(default_factory=Nodes)
    timeout_s: float | None = None  # per cell (default: the grid's limits)
    keep_model: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class SlurmOptions:
    """The SLURM launcher's slice: one sbatch job per cell."""
    sbatch_args: tuple[str, ...] = ()
    timeout_s: float | None = None
    keep_model: bool = False
    check_hardware: bool = True  # each compute node checks its GPUs inside the job
    master_port: int | None = None  # the rendezvous port of every job (default: from each job's id)
    shared: bool = False  # let jobs share their nodes with other jobs (default: exclusive)
    dry_run: bool = False


@dataclass(frozen=True)
class RunOptions:
    results: Path = Path("results/runs")
    group: str | None = None
    force: bool = False
    filters: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    nodes: Nodes = field(default_factory=Nodes)
    launcher: str = "local"
    dry_run: bool = False
    sbatch_args: tuple[str, ...] = ()
    check_hardware: bool = True  # SLURM: check each compute node's GPUs inside the job
    retry_failed: bool = False  # rerun cells whose final row is a failure (RETRYABLE), not the others
    wait: bool = False  # another runner holds the group: wait for it instead of refusing
    keep_model: bool = False  # each cell keeps its trained model / adapter in cells/<run_id>/model
    master_port: int | None = None  # SLURM: the rendezvous port of every job (default: from each job's id)
    slurm_shared: bool = False  # SLURM: let jobs share their nodes with other jobs (default: exclusive)
    estimate: bool | None = None  # predict each cell's peak memory before it starts (None: GPU cells only)
    skip_predicted_oom: bool | None = None  # a cell predicted not to fit is recorded, not run (None: SLURM only)
    track: tuple[str, ...] = ()  # experiment trackers each cell is sent to (harness/track): mlflow, tensorboard

    @property
    def local(self) -> LocalOptions:
        return LocalOptions(nodes=self.nodes, timeout_s=self.timeout_s, keep_model=self.keep_model,
                            dry_run=self.dry_run)

    @property
    def slurm(self) -> SlurmOptions:
        return SlurmOptions(sbatch_args=tuple(self.sbatch_args), timeout_s=self.timeout_s,
                            keep_model=self.keep_model, check_hardware=self.check_hardware,
                            master_port=self.master_port, shared=self.slurm_shared, dry_run=self.dry_run)
