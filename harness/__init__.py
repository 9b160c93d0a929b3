"""The matrix runner: YAML grid -> RunSpecs -> one isolated launch per cell -> result rows; CLI.

It talks to `training_core` only through the spec file it writes and the result file it reads (a process
boundary), plus pure helpers (presets, FLOPs). Built in the matrix-runner issue; nothing here runs yet.
"""
