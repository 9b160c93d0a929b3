"""Predicted peak memory of a cell, before it runs (`python -m harness estimate GRID`): one optimizer step traced with
fake tensors through the cell's own model, strategy, precision and engine code (trace.py), DeepSpeed ZeRO-2's buffers
added analytically, and the fit on a GPU with the margin rule stated (fit.py)."""
