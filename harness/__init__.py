"""The matrix runner: YAML grid -> RunSpecs -> one isolated launch per cell -> result rows; CLI.

It talks to `training_core` only through the spec file it writes and the result file it reads (a process
boundary), plus pure helpers (presets, FLOPs, the image-token arithmetic). It stays light: `plan`, `report`,
`compare`, `baseline` and the data commands never import torch, transformers, peft or deepspeed, and `run` imports
them only in the cell processes it starts (tests/test_cli_imports.py holds this).
"""
