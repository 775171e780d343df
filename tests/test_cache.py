"""The decode-once image cache: hits, invalidation, and atomicity under a kill."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import make_kermany, tmpfs
from xray_loss.data import cache as cache_mod
from xray_loss.data.cache import cached_images
from xray_loss.data.images import decode
from xray_loss.data.splits import DataError


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpeg"))


def test_second_read_is_a_hit_and_a_changed_file_invalidates_it(tmp_path, monkeypatch):
    root = make_kermany(tmp_path / "cx")
    files = _files(root)
    first, bad, hashes = cached_images(files, 32, "squash", tmp_path / "cache", num_workers=0)
    assert not bad and len(hashes) == len(files)
    assert first.shape == (len(files), 1, 32, 32)
    assert np.array_equal(first[3], decode(files[3], 32).numpy())

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite a cache hit")

    monkeypatch.setattr(cache_mod, "decode_all", no_decoding)
    again, _, hashes2 = cached_images(files, 32, "squash", tmp_path / "cache", num_workers=0)
    assert isinstance(again, np.memmap) and np.array_equal(first, again) and hashes2 == hashes
    monkeypatch.undo()

    os.utime(files[0], ns=(time.time_ns(), time.time_ns() + 10**9))  # "edited"
    rebuilt, _, _ = cached_images(files, 32, "squash", tmp_path / "cache", num_workers=0)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert np.array_equal(rebuilt, first)  # same pixels, new key
    other_size, _, _ = cached_images(files, 24, "squash", tmp_path / "cache", num_workers=0)
    assert other_size.shape[-1] == 24


_SLOW_BUILD = """
import sys, time
from pathlib import Path
from xray_loss.data import cache, images
original = images._DecodeDataset.__getitem__
def slow(self, i):
    time.sleep(0.05)
    return original(self, i)
images._DecodeDataset.__getitem__ = slow
files = sorted(Path(sys.argv[1]).rglob("*.jpeg"))
cache.cached_images(files, 32, "squash", Path(sys.argv[2]), num_workers=0)
"""


@pytest.mark.slow
def test_a_killed_build_leaves_no_store_behind(tmp_path):
    root = make_kermany(tmp_path / "cx", n_normal=40, n_pneumonia=60)
    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(root), str(cache)])
    deadline = time.time() + 60
    while time.time() < deadline and not list(cache.glob(".*.tmp*")):
        time.sleep(0.05)
    time.sleep(0.5)  # mid-way through decoding
    assert child.poll() is None, "the build finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert list(cache.glob(".*.tmp*")), "expected the killed build's temp file"
    assert not list(cache.glob("*.npy")) and not list(cache.glob("*.json"))
    # the next run rebuilds a complete store and clears the dead build's temp file
    files = _files(root)
    array, bad, _ = cached_images(files, 32, "squash", cache, num_workers=0)
    assert not bad and array.shape[0] == len(files)
    assert np.array_equal(array[-1], decode(files[-1], 32).numpy())
    assert not list(cache.glob(".*.tmp*"))


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_resize_modes_treat_a_wide_image_as_documented(tmp_path, resize):
    from PIL import Image

    wide = np.full((100, 200), 200, np.uint8)
    wide[:, :50] = 100  # a darker left quarter
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image = decode(tmp_path / "wide.png", 32, resize)[0].numpy()
    assert image.shape == (32, 32)
    if resize == "squash":  # all of it, stretched vertically: the dark quarter is 8 columns
        assert (image[:, :7] == 100).all() and (image[:, 9:] == 200).all()
    if resize == "crop":  # the central 100 x 100 square: the dark quarter is gone
        assert (image == 200).all()
    if resize == "pad":  # letterboxed: black bars above and below, content in the middle
        assert (image[:7] == 0).all() and (image[-7:] == 0).all()
        assert (image[9:23, :7] == 100).all() and (image[9:23, 9:] == 200).all()


def _damage(store: Path, meta: Path, how: str) -> Path:
    """Damage the store the way a full disk, a partial copy or a hand edit would; returns the
    file that is damaged."""
    if how == "truncated_npy":
        store.write_bytes(store.read_bytes()[:-100])
        return store
    if how == "garbage_npy":
        store.write_bytes(b"not a numpy file")
        return store
    if how == "overwritten_in_place":  # same size, same header: the images' bytes zeroed
        data = bytearray(store.read_bytes())
        data[-300:] = bytes(300)
        store.write_bytes(bytes(data))
        return store
    if how == "bad_json":
        meta.write_text('{"files": 12, "bad": [')
        return meta
    data = json.loads(meta.read_text())  # valid JSON describing another file list
    data["hashes"] = data["hashes"][:-1]
    meta.write_text(json.dumps(data))
    return meta


@pytest.mark.parametrize(
    "how", ["truncated_npy", "garbage_npy", "overwritten_in_place", "bad_json", "short_json"]
)
def test_a_damaged_store_is_named_and_rebuilt(tmp_path, caplog, how):
    root = make_kermany(tmp_path / "cx", n_normal=6, n_pneumonia=9)
    files, cache = _files(root), tmp_path / "cache"
    built, _, hashes = cached_images(files, 32, "squash", cache, num_workers=0)
    expected = np.array(built)
    del built  # no live mapping of a file about to be truncated
    (store,) = cache.glob("*.npy")
    damaged = _damage(store, store.with_suffix(".json"), how)
    with caplog.at_level(logging.WARNING, logger="xray_loss.data.cache"):
        again, bad, hashes2 = cached_images(files, 32, "squash", cache, num_workers=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(damaged) in warnings[0]
    assert "is damaged" in warnings[0] and "rebuilding" in warnings[0]
    assert np.array_equal(again, expected) and hashes2 == hashes and not bad
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xray_loss.data.cache"):
        cached_images(files, 32, "squash", cache, num_workers=0)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("image cache hit") for m in messages)
    assert not any("is damaged" in m for m in messages)


def _decode_in_worker(files: list[Path]) -> tuple[int, int]:
    from xray_loss.data.images import decode_all

    out = np.zeros((len(files), 1, 32, 32), dtype=np.uint8)
    bad, hashes = decode_all(files, 32, "squash", num_workers=2, out=out)
    return len(bad), sum(h is not None for h in hashes)


def test_decoding_with_workers_inside_a_joblib_job(tmp_path):
    """hydra/launcher=joblib runs jobs in loky processes, whose start method torch's
    DataLoader workers cannot use: the cold cache of a Kermany job there still builds."""
    from joblib import Parallel, delayed

    root = make_kermany(tmp_path / "data", n_normal=6, n_pneumonia=6)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".jpeg")
    (result,) = Parallel(n_jobs=2, backend="loky")([delayed(_decode_in_worker)(files)])
    assert result == (0, len(files))


def _assert_no_room(err: pytest.ExceptionInfo, cache: Path) -> None:
    message = str(err.value)
    assert str(cache) in message and "MB" in message
    assert "XRAY_LOSS_CACHE" in message and "data.cache=false" in message
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))
    assert not list(cache.glob("*.npy"))


def test_too_little_free_space_is_one_sentence_before_any_decoding(tmp_path, monkeypatch):
    root = make_kermany(tmp_path / "cx", n_normal=6, n_pneumonia=9)
    cache = tmp_path / "cache"
    usage = cache_mod.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(DataError) as err:
        cached_images(_files(root), 32, "squash", cache, num_workers=0)
    _assert_no_room(err, cache)


@pytest.fixture
def tiny_disk(tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        yield disk


def test_a_disk_that_fills_while_the_store_is_reserved_is_named(tmp_path, tiny_disk, monkeypatch):
    # the free-space check passes (the disk claims room), the reservation meets the real limit
    root = make_kermany(tmp_path / "cx", n_normal=24, n_pneumonia=36)
    cache = tiny_disk / "cache"
    usage = cache_mod.shutil.disk_usage(tiny_disk)
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: usage._replace(free=10**9))
    with pytest.raises(DataError) as err:
        cached_images(_files(root), 96, "squash", cache, num_workers=0)
    _assert_no_room(err, cache)


def test_a_read_only_cache_directory_is_one_sentence(tmp_path):
    root = make_kermany(tmp_path / "cx", n_normal=6, n_pneumonia=9)
    with tmpfs(tmp_path / "ro", read_only=True) as disk, pytest.raises(DataError) as err:
        cached_images(_files(root), 32, "squash", disk / "cache", num_workers=0)
    assert str(disk / "cache") in str(err.value) and "XRAY_LOSS_CACHE" in str(err.value)
