"""Stage 3a, the report: stored rows beside the guide's documented numbers, as markdown a person reads.

- `documented`: the guide's tables as validated data (results/reference/*.yaml);
- `guide`: whether a measured row is comparable with its documented row, and why not; implied FLOPs and MFU;
- `summary`: the report's opening sentences (what the rows show, with their numbers);
- `revisions`: what the report says about the recipe revisions that measured the documented rows;
- `render`: the markdown (jinja2 templates in reports/templates), a pure function of the rows;
- `plots`: PNG plots beside it; `index`: reports/index.md over every report.

It reads stored rows only: it never imports harness.grid, harness.run or harness.gate.
"""
