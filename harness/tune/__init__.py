"""`harness tune`: the fastest configuration of each cell that fits its GPU, among the settings that do not change
what is trained (engine, activation checkpointing, per-device micro-batch with gradient accumulation keeping the global
batch, attention kernel).

candidates (enumerate, refuse with the spec's reasons) -> predict (the memory estimator per candidate; those that do
not fit are dropped by the stated rule) -> steptime (an analytic step-time model ranks the rest; fitted to the trials
afterwards) -> search (short measured trials as ordinary cells in their own results group; the winner is the fastest
measured candidate whose measured peak fits) -> output (the tuned grid `run` takes, and the "recipe vs tuned"
report)."""
