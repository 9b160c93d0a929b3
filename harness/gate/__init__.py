"""Stage 3b, the regression gate: a run against a stored baseline, metric by metric in each metric's direction.

- `rules`: tolerances, ordering rules and the estimator's bound (RULES.yaml), checked to check something;
- `compare`: verdicts per cell and metric (medians over repeats, normalised throughput over passes), `check`;
- `baseline`: the baseline key (grid, model, GPU type and count), finding and storing baselines, reading passes.

It reads stored rows only: it never imports harness.grid, harness.run or harness.report.
"""
