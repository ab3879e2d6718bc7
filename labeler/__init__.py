"""densepref labeler: segment-level preference labels for aligned video pairs.

Kept import-light on purpose (docs/design.md §3): heavy libraries load inside the modules that use them.
"""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("densepref")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
