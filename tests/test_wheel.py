"""A wheel installed without ``-e`` runs the README's main job from its own package data.

The wheel is built from a copy of the checkout's sources (``pip wheel --no-build-isolation``,
no network), installed with ``pip install --target T``, and ``python -m experiments.run shapes
--preset smoke`` runs with ``PYTHONPATH=T`` from a folder outside the repository, with no
``WRJAX_*`` variable set. An audit hook records every file the run opens: the shipped
checkpoint comes from ``T/wrjax/_shipped/shapes/`` and nothing of the checkout (but the
interpreter's own environment) is read.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("wrjax", "experiments", "checkpoints/shapes", "checkpoints/expressions", "setup.py",
           "setup.cfg", "pyproject.toml", "README.md")

# Runs experiments.run as __main__ with an audit hook writing the files it opens to $OPENED.
AUDITED_RUN = r"""
import os, runpy, sys
opened = set()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.add(os.path.abspath(os.fsdecode(args[0])))
sys.addaudithook(hook)
try:
    sys.argv = ["experiments.run"] + sys.argv[1:]
    runpy.run_module("experiments.run", run_name="__main__")
finally:
    with open(os.environ["OPENED"], "w") as f:
        f.write("\n".join(sorted(opened)))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(tmp / "dist")], check=True, cwd=src)  # fmt: skip
    [whl] = (tmp / "dist").glob("wrjax-*.whl")
    return whl


def test_the_wheel_holds_the_small_checkpoints_and_the_experiments(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for n in ("wrjax/paths.py", "experiments/run.py", "experiments/configs/shapes.py",
              "wrjax/_shipped/shapes/squares2d-k_1e-3.json",
              "wrjax/_shipped/shapes/squares2d-k_1e-3.msgpack",
              "wrjax/_shipped/expressions/expr-k_inf.msgpack"):
        assert n in names, n
    assert not [n for n in names if "_shipped/chem" in n or ".train." in n]
    assert sum(zipfile.ZipFile(wheel).getinfo(n).file_size for n in names) < 20e6


# slow (76 s of the default run's 15-minute budget): the README's main job from an installed
# wheel; the wheel's contents are checked above in the default run.
@pytest.mark.slow
def test_installed_wheel_runs_the_shapes_smoke_preset(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(target), str(wheel)], check=True)  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRJAX_")}
    env.update(PYTHONPATH=str(target), HOME=str(tmp_path / "home"), OPENED=str(tmp_path / "opened.txt"),
               MPLCONFIGDIR=str(tmp_path / "mpl"), JAX_PLATFORMS="cpu")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", AUDITED_RUN, "shapes", "--preset", "smoke", "--budget", "20",
         "--workdir", str(work / "runs"), "--no-progress"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seed_dir = work / "runs" / "shapes" / "smoke-b20-grid" / "k1e-3_r50" / "seed0"
    summary = json.loads((seed_dir / "summary.json").read_text())
    assert summary["num_evaluations"] == 20 and summary["status"] == "complete"
    assert (seed_dir.parent / "topk.png").is_file()

    opened = (tmp_path / "opened.txt").read_text().splitlines()
    shipped = target / "wrjax" / "_shipped" / "shapes" / "squares2d-k_1e-3.msgpack"
    assert str(shipped) in opened
    # The package itself came from the wheel, and nothing of the checkout was read (the
    # interpreter's environment may live inside it, as the dev venv does).
    assert str(target / "experiments" / "run.py") in opened or any(
        p.startswith(str(target / "experiments")) for p in opened)
    prefix = os.path.realpath(sys.prefix)
    from_repo = [p for p in opened if p.startswith(str(REPO) + os.sep)
                 and not os.path.realpath(p).startswith(prefix + os.sep)]
    assert not from_repo, from_repo[:10]
