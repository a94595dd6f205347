"""Deprecated: moved to :mod:`wrjax.paths` (kept only while the task modules move over)."""

from __future__ import annotations

from pathlib import Path

from wrjax import paths

__all__ = ["shared_data_dir"]


def shared_data_dir(name: str, env_var: str | None = None, *, must_exist: bool = True) -> Path:
    """:func:`wrjax.paths.data_dir`; ``must_exist=False`` returns a best guess instead of raising."""
    try:
        return paths.data_dir(name, env_var)
    except FileNotFoundError:
        if must_exist:
            raise
        root = paths.repo_root()
        return (root.parent if root else Path.cwd()) / "shared" / "data" / name
