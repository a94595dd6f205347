"""The one resolver of data, shipped checkpoints and caches (``wrjax.paths``): its order
(environment variables, the checkout, the wheel's package data) and its errors."""

import math
from pathlib import Path

import pytest

from wrjax import paths

ENV_VARS = ("WRJAX_DATA_DIR", "WRJAX_CHECKPOINT_DIR", "WRJAX_CACHE_DIR", "WRJAX_TEST_DIR")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Pretend the package runs from an installed wheel: ``site/wrjax`` with package data."""
    pkg = tmp_path / "site" / "wrjax"
    (pkg / "_shipped" / "demo").mkdir(parents=True)
    monkeypatch.setattr(paths, "_PACKAGE", pkg)
    return pkg


def touch_checkpoint(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text("{}")
    (folder / f"{name}.msgpack").write_bytes(b"")
    return folder / name


def test_repo_root_is_this_checkout_and_none_when_installed(installed):
    assert paths.repo_root() is None
    assert paths._PACKAGE == installed


def test_repo_root_of_the_checkout():
    root = paths.repo_root()
    assert root is not None and (root / "wrjax" / "paths.py").is_file()
    assert (root / "checkpoints").is_dir()


def test_data_dir_order(tmp_path, monkeypatch):
    explicit, common = tmp_path / "explicit", tmp_path / "common"
    (common / "demo").mkdir(parents=True)
    explicit.mkdir()
    monkeypatch.setenv("WRJAX_DATA_DIR", str(common))
    assert paths.data_dir("demo", "WRJAX_TEST_DIR") == common / "demo"
    monkeypatch.setenv("WRJAX_TEST_DIR", str(explicit))
    assert paths.data_dir("demo", "WRJAX_TEST_DIR") == explicit  # the task's variable first


def test_data_dir_from_the_checkout(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "checkpoints").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (tmp_path / "shared" / "data" / "demo").mkdir(parents=True)
    monkeypatch.setattr(paths, "_PACKAGE", root / "wrjax")
    assert paths.repo_root() == root
    assert paths.data_dir("demo") == tmp_path / "shared" / "data" / "demo"  # beside the repo
    (root / "shared" / "data" / "other").mkdir(parents=True)
    assert paths.data_dir("other") == root / "shared" / "data" / "other"  # inside it


def test_data_dir_missing_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("WRJAX_TEST_DIR", str(tmp_path / "nope"))
    monkeypatch.setenv("WRJAX_DATA_DIR", str(tmp_path / "common"))
    with pytest.raises(FileNotFoundError) as e:
        paths.data_dir("no_such_set", "WRJAX_TEST_DIR")
    msg = str(e.value)
    root = paths.repo_root()
    for place in (tmp_path / "nope", tmp_path / "common" / "no_such_set",
                  root.parent / "shared" / "data" / "no_such_set",
                  root / "shared" / "data" / "no_such_set"):
        assert str(place) in msg
    assert "WRJAX_TEST_DIR" in msg and "WRJAX_DATA_DIR" in msg


def test_installed_data_dir_needs_an_env_var(installed):
    with pytest.raises(FileNotFoundError, match="WRJAX_DATA_DIR"):
        paths.data_dir("dsprites")


def test_shipped_checkpoint_order(tmp_path, monkeypatch, installed):
    wheel = touch_checkpoint(installed / "_shipped" / "demo", "m")
    assert paths.shipped_checkpoint("demo", "m") == wheel
    env = touch_checkpoint(tmp_path / "env" / "demo", "m")
    monkeypatch.setenv("WRJAX_CHECKPOINT_DIR", str(tmp_path / "env"))
    assert paths.shipped_checkpoint("demo", "m") == env
    # An env folder without that model falls through to the package data.
    assert paths.shipped_checkpoint("demo", "m") != wheel
    (env.with_suffix(".json")).unlink()
    assert paths.shipped_checkpoint("demo", "m") == wheel


def test_shipped_checkpoint_prefers_the_checkout_over_package_data():
    root = paths.repo_root()
    p = paths.shipped_checkpoint("shapes", "squares2d-k_inf")
    assert p == root / "checkpoints" / "shapes" / "squares2d-k_inf"
    assert Path(f"{p}.msgpack").is_file()


def test_shipped_checkpoint_missing(tmp_path, monkeypatch, installed):
    monkeypatch.setenv("WRJAX_CHECKPOINT_DIR", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as e:
        paths.shipped_checkpoint("demo", "absent")
    assert str(tmp_path / "env" / "demo" / "absent") in str(e.value)
    assert str(installed / "_shipped" / "demo" / "absent") in str(e.value)


def test_cache_dir_order(tmp_path, monkeypatch, installed):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    d = paths.cache_dir("demo")
    assert d == tmp_path / "home" / ".cache" / "wrjax" / "demo" and d.is_dir()
    monkeypatch.setenv("WRJAX_CACHE_DIR", str(tmp_path / "cache"))
    d = paths.cache_dir("demo")
    assert d == tmp_path / "cache" / "demo" and d.is_dir()


def test_cache_dir_of_the_checkout():
    assert paths.cache_dir("chem") == paths.repo_root() / "checkpoints" / "chem"


def test_checkpoint_for_k(installed):
    folder = installed / "_shipped" / "demo"
    for tag in ("inf", "1e-3"):
        touch_checkpoint(folder, f"model-k_{tag}")
    assert paths.checkpoint_for_k("demo", "model", 1e-3) == folder / "model-k_1e-3"
    assert paths.checkpoint_for_k("demo", "model", 0.001) == folder / "model-k_1e-3"
    assert paths.checkpoint_for_k("demo", "model", None) == folder / "model-k_inf"
    assert paths.checkpoint_for_k("demo", "model", math.inf) == folder / "model-k_inf"
    # No model pretrained with that k: the unweighted one (the loop's first fine-tune applies k).
    assert paths.checkpoint_for_k("demo", "model", 1e-1) == folder / "model-k_inf"
    with pytest.raises(FileNotFoundError, match=r"model-k_1e-1.*shipped ks: 1e-3, inf"):
        paths.checkpoint_for_k("demo", "model", 1e-1, fallback=None)
    with pytest.raises(FileNotFoundError, match="shipped ks: none"):
        paths.checkpoint_for_k("demo", "other", 1e-3)


def test_shipped_ks_of_the_checkout():
    assert {"inf", "1e-3"} <= set(paths.shipped_ks("shapes", "squares2d"))


def test_no_development_machine_path_or_file_lookups_in_the_library():
    root = paths.repo_root()
    for f in (root / "wrjax").rglob("*.py"):
        text = f.read_text()
        assert "/work/shared" not in text, f
