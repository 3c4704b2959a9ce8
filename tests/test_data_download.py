"""MedMNIST's download path, with the network replaced: MD5 check, temp file, rename."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import urllib.error

import pytest

from medft_jax.data import DataError
from medft_jax.data import medmnist as mm


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_checks_md5_and_leaves_nothing_on_mismatch(tmp_path, monkeypatch):
    payload = b"not the official file"
    monkeypatch.setattr(mm.urllib.request, "urlopen", lambda *a, **k: _Response(payload))
    with pytest.raises(DataError, match=r"breastmnist\.npz.*MD5 [0-9a-f]{32} does not match"):
        mm.download("breastmnist", 28, tmp_path)
    assert list(tmp_path.iterdir()) == []
    good = dataclasses.replace(mm.FLAGS["breastmnist"], md5={28: hashlib.md5(payload).hexdigest()})
    monkeypatch.setitem(mm.FLAGS, "breastmnist", good)
    path = mm.download("breastmnist", 28, tmp_path)
    assert path == tmp_path / "breastmnist.npz" and path.read_bytes() == payload
    assert [p.name for p in tmp_path.iterdir()] == ["breastmnist.npz"]


def test_offline_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(mm.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"cannot download .*breastmnist_64\.npz.*--data-dir"):
        mm.download("breastmnist", 64, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_leaves_no_folder_it_made(tmp_path, monkeypatch):
    """``--data-dir`` (or ``~/tensorflow_datasets``) made for a download that failed was left
    behind, empty; a folder that was there before is kept."""

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(mm.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="cannot download"):
        mm.download("breastmnist", 28, tmp_path / "data" / "medmnist")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="cannot download"):
        mm.download("breastmnist", 28, tmp_path / "data" / "medmnist")
    assert [p.name for p in tmp_path.iterdir()] == ["data"] and not any(
        (tmp_path / "data").iterdir()
    )
