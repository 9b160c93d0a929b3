"""MLflow: one run per cell, under a parent run per grid and results group, in one experiment.

Configured as MLflow is everywhere: `MLFLOW_TRACKING_URI` (a server, `http://...`, or a local store), and
`MLFLOW_EXPERIMENT_NAME` (default: the grid's name). Without a URI the runs go to a local sqlite store in the results
root (`<results>/mlflow.db`, artifacts in `<results>/mlartifacts`; `mlflow ui --backend-store-uri
sqlite:///<results>/mlflow.db` shows them). Unless set, the client's HTTP retries are short (one retry, 10 s timeout)
so that a server that is down costs the run seconds once, not minutes per cell, and MLflow's usage telemetry is off
(MLFLOW_DISABLE_TELEMETRY=false turns it back on)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .base import Sink, artifacts, final_metrics, params, row_key, step_values, tags

KIND, GROUP, ROW = "phi3v_kind", "phi3v_group", "phi3v_row"  # tags the harness finds its runs by
BATCH = 100  # MLflow takes at most 100 params and 1000 metrics per log_batch
STATUS = {"ok": "FINISHED", "interrupted": "KILLED"}  # every other status ends the tracker run FAILED
# Unless the user set them: short HTTP retries (a dead server costs seconds once), and no usage telemetry from this
# process (MLflow 3 otherwise reports usage to its makers' servers; a benchmark talks only to the tracker it was given)
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class MlflowSink(Sink):
    name = "mlflow"

    def __init__(self, results_root: Path):
        for key, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient

        root = Path(results_root).resolve()
        self.local = not os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        self.artifact_root = (root / "mlartifacts").as_uri() if self.local else None
        if self.local:
            root.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiments: dict[str, str] = {}
        self.parents: dict[tuple[str, str], str] = {}

    def where(self) -> str:
        if "@" in self.uri.split("//", 1)[-1].split("/", 1)[0]:  # user:password@host: never into a row or a log
            scheme, rest = self.uri.split("//", 1)
            return f"{scheme}//{rest.split('@', 1)[1]}"
        return self.uri

    # ---------------------------------------------------------------- runs
    def _experiment(self, grid: str) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or grid
        if name not in self.experiments:
            found = self.client.get_experiment_by_name(name)
            self.experiments[name] = found.experiment_id if found is not None else \
                self.client.create_experiment(name, artifact_location=self.artifact_root and
                                              f"{self.artifact_root}/{name}")
        return self.experiments[name]

    def _find(self, experiment: str, **wanted: str):
        query = " and ".join(f"tags.{key} = {_quoted(value)}" for key, value in wanted.items())
        return self.client.search_runs([experiment], filter_string=query, max_results=1000)

    def _parent(self, grid: str, group: str) -> str:
        """The grid and group's parent run: found by its tags, else made."""
        key = (grid, group)
        if key not in self.parents:
            experiment = self._experiment(grid)
            found = self._find(experiment, **{KIND: "group", GROUP: f"{grid}/{group}"})
            if found:
                self.parents[key] = found[0].info.run_id
                self.client.update_run(self.parents[key], status="RUNNING")
            else:
                run = self.client.create_run(experiment, run_name=f"{grid}/{group}",
                                             tags={KIND: "group", GROUP: f"{grid}/{group}", "grid": grid,
                                                   "group": group})
                self.parents[key] = run.info.run_id
        return self.parents[key]

    def start_cell(self, grid, group, cell, run_id, spec):
        experiment, parent = self._experiment(grid), self._parent(grid, group)
        run = self.client.create_run(experiment, run_name=f"cell {cell} {run_id}",
                                     tags={"mlflow.parentRunId": parent, KIND: "cell", GROUP: f"{grid}/{group}",
                                           "run_id": run_id, "grid": grid, "group": group, "cell": str(cell)})
        items = list(params(spec).items())
        from mlflow.entities import Param

        for start in range(0, len(items), BATCH):
            self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[start:start + BATCH]])
        return run.info.run_id

    def log_steps(self, handle, steps):
        from mlflow.entities import Metric

        metrics = [Metric(key, value, int(float(step.get("time") or time.time()) * 1000), int(step["step"]))
                   for step in steps for key, value in step_values(step).items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(handle, metrics=metrics[start:start + 1000])

    def finish_cell(self, handle, row, grid, group, cell_dir):
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        last = len((row.get("series") or {}).get("loss") or [])
        metrics = [Metric(key, value, now, last) for key, value in final_metrics(row).items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(handle, metrics=metrics[start:start + 1000])
        self.client.log_batch(handle, tags=[RunTag(k, v) for k, v in tags(row, grid, group).items()])
        for path in artifacts(row, cell_dir):
            self.client.log_artifact(handle, str(path))
        self.client.set_tag(handle, ROW, row_key(row))  # last: a run with this tag is complete
        self.client.set_terminated(handle, STATUS.get(row["status"], "FAILED"))
        return {"run": handle, "experiment": self._experiment(grid)}

    def sent(self, grid, group, row):
        return bool(self._find(self._experiment(grid), **{ROW: row_key(row)}))

    def incomplete(self, grid: str, group: str, run_id: str) -> list[str]:
        """Tracker runs of this cell that never got their row (the tracker failed while the cell ran)."""
        found = self._find(self._experiment(grid), **{KIND: "cell", GROUP: f"{grid}/{group}", "run_id": run_id})
        return [r.info.run_id for r in found if ROW not in r.data.tags]

    def drop(self, handle: str) -> None:
        self.client.delete_run(handle)

    def close(self):
        for parent in self.parents.values():
            self.client.set_terminated(parent, "FINISHED")
        self.parents.clear()
