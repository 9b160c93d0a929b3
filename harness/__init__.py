"""The matrix runner: a YAML grid becomes cells, each cell runs as one isolated torchrun process group, and its result
becomes a stored row that reports and the regression gate read.

The pipeline, in the order data flows and the order of its folders: `grid/` (the grid file, its cells and their
validity, the selection, this machine's hardware, inputs checked before a run) -> `run/` (options, the runner, the
launchers, every command line, child processes, console output) -> `store.py` (rows.jsonl, env.json, cells/) ->
`report/` (markdown beside the guide's documented numbers) and `gate/` (verdicts against a stored baseline). `cli/`
is the front door: it parses arguments, calls one library function per command, prints and chooses the exit code.
Shared at the top: `paths`, `rows` (how a stored row is read), `outputs`, `plan` (a grid before it runs), `later_predictions` (memory predictions for rows that ran
without one, joined by run_id), `doctor`.

Import rules (tests/test_layout.py): layers point down only (training_core's light modules < paths, outputs, rows <
store < grid < run, report, gate < plan, later_predictions, doctor < cli); `report/` and `gate/` never import `grid/`, `run/` or each
other; launchers never import the runner; no import circles; no torch at module level anywhere here. The harness talks
to `training_core` through the spec file it writes and the result file it reads (a process boundary), plus its light
modules (spec, gpus, result, errors, FLOPs arithmetic, presets). docs/ARCHITECTURE.md says more.
"""
