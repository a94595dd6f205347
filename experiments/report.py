"""The table-and-plot report shared by the comparison scripts (``compare_optimizers``,
``compare_refit``): run (or read back) labelled settings over seeds, then write one markdown
table and one TopK plot."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from experiments.ablation import read_summaries
from experiments.run import format_table, run_setting, setting_dir


class Row(NamedTuple):
    """One table row: its label, the preset overrides of its setting and the workdir its runs
    live under (as ``experiments.run.run_setting`` takes them)."""

    label: str
    overrides: dict
    workdir: Path


class Gathered(NamedTuple):
    """The finished seeds' summaries (each labelled with its row) and, per row with any, the
    setting directory and label (the plot's curves)."""

    summaries: list
    dirs: list
    labels: list


def gather(rows, task: str, preset: str, seeds, *, report_only: bool, progress: bool = True,
           task_cache: dict | None = None) -> Gathered:
    """Run each row's setting over ``seeds`` (finished seeds are read back by ``run_setting``),
    or with ``report_only`` only read back the seeds already finished; a row with none is left
    out of the plot (its missing seeds are printed by ``read_summaries``)."""
    cache = {} if task_cache is None else task_cache
    summaries, dirs, labels = [], [], []
    for row in rows:
        if report_only:
            got = read_summaries(setting_dir(row.workdir, task, preset, row.overrides), row.label, seeds)
        else:
            got = run_setting(task, preset, row.overrides, seeds, row.workdir, progress=progress,
                              task_cache=cache)  # fmt: skip
        if not got:
            continue
        for s in got:
            s["setting"] = row.label
        summaries += got
        dirs.append(Path(got[0]["dir"]).parent)
        labels.append(row.label)
    return Gathered(summaries, dirs, labels)


def write_report(gathered: Gathered, header: str, md_path: Path, *, title: str,
                 png_path: Path | None = None) -> str:
    """Write ``header`` and the TopK table to ``md_path`` and print them; plot the rows' TopK
    curves to ``png_path`` (default: ``md_path`` with suffix ``.png``; a plot failure is
    printed, not raised: the table is the result). Returns the markdown text."""
    text = header + "\n\n" + format_table(gathered.summaries) + "\n"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    print(text)
    try:
        from experiments.plot import plot_settings

        png = md_path.with_suffix(".png") if png_path is None else png_path
        plot_settings(gathered.dirs, png, title=title, labels=gathered.labels)
    except Exception as e:  # noqa: BLE001 - the table is the result; a plot failure is not fatal
        print(f"plot skipped: {type(e).__name__}: {e}")
    return text
