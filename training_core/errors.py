"""The base of every error a user can cause (a bad grid, dataset, flag, file or checkpoint).

Each such error derives from `UserError` and its message names the file, line or key and the fix. The CLI
(`harness/cli`) catches the class and prints `error: <message>` with exit 2; anything else is a bug and keeps its
traceback. `UserError` is a `ValueError`, so code that catches ValueError still catches these."""


class UserError(ValueError):
    """A mistake in what the user gave the harness, worded for the user."""
