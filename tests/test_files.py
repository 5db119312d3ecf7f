"""The one atomic-write helper: old or new content, never half; readable mode; no leftovers."""

import json
import stat

import numpy as np
import pytest

from dqecir.files import (
    FILE_MODE,
    atomic_write,
    file_sha256,
    write_json_atomic,
    write_npy_atomic,
    write_text_atomic,
)


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path):
    p = tmp_path / "f.json"
    write_json_atomic(p, {"v": 1})

    def boom(tmp):
        tmp.write_text('{"v": 2')  # half written, then the disk fills
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, boom)
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]


def test_writes_are_readable_by_others_and_replace_the_file(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    write_text_atomic(p, "one")
    write_text_atomic(p, "two")
    assert p.read_text() == "two"
    assert stat.S_IMODE(p.stat().st_mode) == FILE_MODE == 0o644


def test_npy_round_trip_and_sha256(tmp_path):
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    write_npy_atomic(tmp_path / "a.npy", a)
    assert np.array_equal(np.load(tmp_path / "a.npy"), a)
    other = tmp_path / "b.npy"
    write_npy_atomic(other, a)
    assert file_sha256(tmp_path / "a.npy") == file_sha256(other)
    write_npy_atomic(other, a + 1)
    assert file_sha256(tmp_path / "a.npy") != file_sha256(other)
