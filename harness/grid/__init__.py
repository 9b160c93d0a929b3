"""Stage 1, the grid: a YAML grid file becomes cells, each a validated `RunSpec` or a listed reason why not.

- `limits`: MAX_CELLS (light: the CLI's --help states it);
- `schema`: the grid file's keys and types, profiles, limits, `auto` hardware;
- `file`: reading a grid strictly (UTF-8, unique keys, ${VAR}s, bounded size) into a `Grid`;
- `cells`: expanding axes, includes and profiles into cells, and each cell's validity (training_core/gpus.py);
- `select`: `--filter KEY=VALUE` and the check that a selection runs something;
- `hardware`: this machine's GPUs (NVML) against a grid's, and the results group they make;
- `preflight`: a grid's inputs (checkpoints, datasets) present before anything runs.
"""
