"""Failures in the middle of a write (issue 17 item 4): a stage that dies while writing leaves the
artifacts written before it intact, no temporary file and no half-written file under a final name.
(The features stage's case, with a resume to the same bytes, is in test_features_build.py.)
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _stage(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "src" / "stages" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _failing_atomic_path(real, fail_on_call: int, calls: list):
    """An ``atomic_path`` whose ``fail_on_call``-th use writes half a file, then raises."""
    @contextlib.contextmanager
    def wrapper(path):
        calls.append(Path(path).name)
        if len(calls) == fail_on_call:
            with real(path) as tmp:
                tmp.write_bytes(b"half a file")
                raise OSError("disk full (injected)")
        with real(path) as tmp:
            yield tmp
    return wrapper


def test_train_lgb_dies_on_its_second_model_file(tiny_root, tmp_path, monkeypatch):
    import lightgbm

    import wbdc.lgb
    root = tmp_path / "root"
    root.mkdir()
    for name in ("data", "features"):
        (root / name).symlink_to(tiny_root / name, target_is_directory=True)
    features_before = _tree(tiny_root / "features")
    calls: list[str] = []
    monkeypatch.setattr(wbdc.lgb, "atomic_path", _failing_atomic_path(wbdc.lgb.atomic_path, 2, calls))
    monkeypatch.setattr(sys, "argv", ["train_lgb.py", "--root", str(root), "--preset", "tiny",
                                      "--seed", "7", "--no-progress",
                                      "--set", "lgb.num_boost_round=10"])
    with pytest.raises(OSError, match="injected"):
        _stage("train_lgb").main()
    out = root / "models" / "lgb"
    files = sorted(p.name for p in out.iterdir())
    assert [f for f in files if f.endswith(".tmp")] == []
    assert calls[1] not in files                                   # the failed file: nowhere
    assert calls[0] in files                                       # the one before it: complete
    lightgbm.Booster(model_file=str(out / calls[0]))
    assert not (root / ".pipeline").exists()
    assert _tree(tiny_root / "features") == features_before        # upstream untouched


def test_prepare_dies_writing_its_last_file_and_keeps_the_old_caches(tiny_root, tmp_path, monkeypatch):
    import wbdc.prepare
    from wbdc.paths import Paths
    raw = Paths.at(tiny_root).synthetic_raw("tiny", 7)
    out = tmp_path / "prepared"
    wbdc.prepare.prepare(raw, out)
    before = _tree(out)

    def failing(obj, path, *a, **k):
        Path(path).write_text("{half")
        raise OSError("disk full (injected)")
    monkeypatch.setattr(wbdc.prepare, "write_json", failing)
    with pytest.raises(OSError, match="injected"):
        wbdc.prepare.prepare(raw, out)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]   # no temporary folder left
