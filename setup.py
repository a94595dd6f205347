"""Build hook: the small shipped checkpoints become package data of a (non-editable) wheel.

``checkpoints/shapes/*`` and ``checkpoints/expressions/*`` (a few MB of pretrained models) are
copied to ``wrjax/_shipped/<task>/`` in the built package, where ``wrjax.paths`` finds them
when no checkout is around. The chemistry models (45 MB) stay out: an installed wheel reads
them from ``$WRJAX_CHECKPOINT_DIR/chem``. Everything else is declared in ``setup.cfg``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("shapes", "expressions")
SUFFIXES = (".json", ".msgpack", ".npz", ".md")


class BuildPyWithCheckpoints(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's checkpoints/ directly
        for task in SHIPPED:
            src = Path("checkpoints") / task
            dst = Path(self.build_lib) / "wrjax" / "_shipped" / task
            dst.mkdir(parents=True, exist_ok=True)
            for f in sorted(src.iterdir()):
                if f.is_file() and f.suffix in SUFFIXES and ".train" not in f.name:
                    shutil.copy2(f, dst / f.name)


setup(cmdclass={"build_py": BuildPyWithCheckpoints})
