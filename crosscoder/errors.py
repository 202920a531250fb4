"""User-facing errors: one line that names the problem and the fix.

The CLI prints ``error: <message>`` for these and exits non-zero with no traceback;
anything else is a bug and keeps its traceback.
"""

__all__ = ["FeatgraphError"]


class FeatgraphError(Exception):
    """A problem with the user's input (a path, a name, a shape), stated with its fix."""
