"""The decode-once image cache: hits, invalidation, and atomicity under a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import make_kermany
from xray_loss.data import images as images_mod
from xray_loss.data.images import cached_images, decode


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

    monkeypatch.setattr(images_mod, "decode_all", no_decoding)
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
from xray_loss.data import images
original = images._DecodeDataset.__getitem__
def slow(self, i):
    time.sleep(0.05)
    return original(self, i)
images._DecodeDataset.__getitem__ = slow
files = sorted(Path(sys.argv[1]).rglob("*.jpeg"))
images.cached_images(files, 32, "squash", Path(sys.argv[2]), num_workers=0)
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
