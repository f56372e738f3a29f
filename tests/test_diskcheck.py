"""The disk check's core: figures from round timings; and its shell on a real directory."""
import os
import random

import pytest

from gateway import diskcheck as D


def test_figures_from_rounds():
    fig = D.summarize([0.0002, 0.0001, 0.0003], [0.0009, 0.0008, 0.0010], scattered=8)
    assert fig.one_page_us == pytest.approx(200) and fig.scattered_us == pytest.approx(900)
    assert fig.per_page_us == pytest.approx(100)  # (900 - 200) / 7
    assert fig.commit_us == pytest.approx(200 + 9 * 100 + 200)  # 10 pages synced, then the meta page
    assert D.summarize([0.0005], [0.0001], scattered=8).per_page_us == 0  # never negative
    with pytest.raises(ValueError):
        D.summarize([], [0.001])


def test_scratch_dir_is_the_closest_existing_directory(tmp_path):
    assert D.scratch_dir(str(tmp_path / "a" / "b")) == str(tmp_path)
    assert D.scratch_dir(str(tmp_path)) == str(tmp_path)


def test_measure_uses_a_scratch_file_and_removes_it(tmp_path):
    ticks = iter(range(10_000))
    fig = D.measure(str(tmp_path), rounds=3, rng=random.Random(1), clock=lambda: next(ticks) / 1e6)
    assert fig.one_page_us == pytest.approx(1) and fig.scattered_us == pytest.approx(1)  # one tick each
    assert os.listdir(tmp_path) == []


def test_measure_in_a_directory_that_cannot_take_a_file_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        D.measure(str(tmp_path / "missing"), rounds=1)


MOUNTS = """proc /proc proc rw,relatime 0 0
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,relatime 0 0
/dev/vdb /srv/data\\040dir xfs rw 0 0
tmpfs /srv/data\\040dir/ram tmpfs rw 0 0
/dev/vdc /srv/data\\040dir/ram ext4 rw 0 0
"""


def test_the_filesystem_holding_a_path_is_its_longest_mount_point_the_latest_mount_on_top():
    assert D.filesystem("/work/main/var", MOUNTS) == ("/", "ext4")
    assert D.filesystem("/dev/shm/gw", MOUNTS) == ("/dev/shm", "tmpfs")
    assert D.filesystem("/dev/shmx", MOUNTS) == ("/", "ext4")  # a prefix of the name is not a parent
    assert D.filesystem("/srv/data dir/var", MOUNTS) == ("/srv/data dir", "xfs")  # \\040 is a space
    assert D.filesystem("/srv/data dir/ram/var", MOUNTS) == ("/srv/data dir/ram", "ext4")  # mounted over the tmpfs
    assert D.filesystem("/x", "") == ("/", "unknown")
