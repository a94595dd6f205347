"""Where the shared, read-only data sets are found.

The project's data (``shared/data/<name>/``, see each ``SOURCE.md``) lives *beside* the
repository, not in it. A folder is looked up in this order:

1. the environment variable given by the caller (e.g. ``WRJAX_ZINC_DIR``), if set;
2. ``WRJAX_DATA_DIR/<name>``, if ``WRJAX_DATA_DIR`` is set;
3. ``<repository>/../shared/data/<name>`` (a checkout with ``shared/`` beside it, as in CI);
4. ``<repository>/shared/data/<name>``;
5. ``/work/shared/data/<name>`` (the development machines).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_data_dir", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir(name: str, env_var: str | None = None, *, must_exist: bool = True) -> Path:
    """The folder of data set ``name``.

    Raises ``FileNotFoundError`` listing where it looked, unless ``must_exist=False``, which
    returns the first candidate instead (for module-level defaults read lazily).
    """
    candidates = []
    if env_var and os.environ.get(env_var):
        candidates.append(Path(os.environ[env_var]))
    if os.environ.get("WRJAX_DATA_DIR"):
        candidates.append(Path(os.environ["WRJAX_DATA_DIR"]) / name)
    candidates += [
        REPO_ROOT.parent / "shared" / "data" / name,
        REPO_ROOT / "shared" / "data" / name,
        Path("/work/shared/data") / name,
    ]
    for c in candidates:
        if c.is_dir():
            return c
    if not must_exist:
        return candidates[0]
    raise FileNotFoundError(
        f"data set {name!r} not found; looked in: " + ", ".join(str(c) for c in candidates)
        + (f". Set {env_var} or WRJAX_DATA_DIR." if env_var else ". Set WRJAX_DATA_DIR.")
    )
