"""experiments.topk_at: TopK after n evaluations from records.jsonl, against a NumPy sort."""

import json

import numpy as np
import pytest

from experiments import topk_at


def write_run(path, rng, num_evals, fail_every=7):
    """A run's records: evaluations with scores (every ``fail_every``-th an objective error),
    discarded duplicates (no eval index) between them, shuffled in file order."""
    path.mkdir(parents=True)
    recs, scores = [], {}
    for e in range(num_evals):
        if e % fail_every == 3:
            recs.append({"seq": len(recs), "eval": e, "status": "objective-error", "score": None})
        else:
            s = float(rng.normal())
            scores[e] = s
            recs.append({"seq": len(recs), "eval": e, "status": "ok", "score": s})
        if e % 3 == 0:
            recs.append({"seq": len(recs), "eval": None, "status": "duplicate", "score": None})
    with open(path / "records.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
        f.write('{"seq": 99999, "eval": 123')  # a torn last line (a killed run) is skipped
    return scores


def kth(scores, n, k):
    vals = sorted((s for e, s in scores.items() if e < n), reverse=True)
    return vals[k - 1] if len(vals) >= k else np.nan


def test_topk_after_is_the_kth_best_of_the_first_n_evaluations(tmp_path):
    rng = np.random.default_rng(0)
    scores = write_run(tmp_path / "s" / "seed0", rng, 60)
    recs = topk_at.evaluations(tmp_path / "s" / "seed0")
    assert [r["eval"] for r in recs] == list(range(60))
    for n in (1, 5, 12, 59, 60):
        got = topk_at.topk_after(recs, n, ks=(1, 3, 10))
        for k in (1, 3, 10):
            np.testing.assert_allclose(got[f"top{k}"], kth(scores, n, k), rtol=1e-6)
    assert topk_at.topk_after(recs, 61) is None  # not reached yet
    with pytest.raises(ValueError):
        topk_at.topk_after(recs, 0)


def test_table_rows_and_group_means(tmp_path, capsys):
    rng = np.random.default_rng(1)
    root = tmp_path / "runs"
    a = write_run(root / "task" / "setting" / "seed0", rng, 40)
    b = write_run(root / "task" / "setting" / "seed1", rng, 40)
    write_run(root / "task" / "setting" / "seed2", rng, 15)  # stopped early: not in "after 20"
    assert topk_at.main([str(root), "--after", "10", "20", "--k", "1", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in out[2:]}
    assert rows["task/setting/seed2"].endswith("|  |")
    want = [kth(a, 20, 5), kth(b, 20, 5)]
    mean, se = np.mean(want), np.std(want, ddof=1) / np.sqrt(2)
    cell = rows["**task/setting: mean ± s.e.**"].rstrip(" |").split(" | ")[-1]
    top5 = cell.split(" / ")[1]
    assert top5 == f"{mean:.3g} ± {se:.2g} (2)"


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert topk_at.main([str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert topk_at.main([str(tmp_path / "empty")]) == 2
    assert "no run directory" in capsys.readouterr().err
