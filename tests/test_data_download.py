"""MedMNIST's download path, with the network replaced: MD5 check, temp file, rename."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import urllib.error
import urllib.request
from pathlib import Path

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
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _Response(payload))
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

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        mm.find_or_download("breastmnist", 64, tmp_path)
    assert str(err.value).endswith(
        "download breastmnist_64.npz yourself (or copy it from ~/.medmnist, where the medmnist "
        f"package keeps it) into the data dir; looked for it in {tmp_path} or "
        f"{tmp_path / 'medmnist'} (--data-dir, or a grid's data_dir; without either, "
        "$TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    assert list(tmp_path.iterdir()) == []
    # A relative data dir (a grid file's) is named where it was looked for: from the cwd.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        mm.find_or_download("breastmnist", 64, Path("tfds"))
    assert str(err.value).endswith(
        f"looked for it in {tmp_path / 'tfds'} or {tmp_path / 'tfds' / 'medmnist'} "
        "(--data-dir, or a grid's data_dir; without either, $TFDS_DATA_DIR or "
        "~/tensorflow_datasets)"
    )


def test_a_file_under_a_near_name_is_named_where_the_flags_file_is_missing(tmp_path):
    """``pathmnist_28.npz`` (the 28 px file saved with a size), or only the 64 px file
    where the 28 px one was asked for: "not found" and nothing more sent users to download
    a file they had."""
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "breastmnist_28.npz").write_bytes(b"x")
    (tmp_path / "breastmnist_64.npz").write_bytes(b"x")
    with pytest.raises(DataError) as err:
        mm.find_or_download("breastmnist", 28, tmp_path, allow_download=False)
    assert str(err.value).endswith(
        f"; {tmp_path / 'breastmnist_64.npz'} is there: that is medmnist/breastmnist@64; "
        f"{tmp_path / 'medmnist' / 'breastmnist_28.npz'} is there: MedMNIST names its 28 px "
        "file breastmnist.npz; rename it"
    )
    with pytest.raises(DataError) as err:
        mm.find_or_download("breastmnist", 128, tmp_path, allow_download=False)
    assert "breastmnist_64.npz is there: that is medmnist/breastmnist@64" in str(err.value)
    assert "rename it" not in str(err.value)
    (tmp_path / "breastmnist_64.npz").unlink()
    (tmp_path / "medmnist" / "breastmnist_28.npz").unlink()
    with pytest.raises(DataError) as err:
        mm.find_or_download("breastmnist", 28, tmp_path, allow_download=False)
    assert str(err.value).endswith("~/tensorflow_datasets)")


def test_a_folder_named_as_the_file_is_refused_not_downloaded_beside(tmp_path, monkeypatch):
    def online(*a, **k):
        raise AssertionError("no download: the name is taken")

    monkeypatch.setattr(urllib.request, "urlopen", online)
    (tmp_path / "breastmnist.npz").mkdir()
    with pytest.raises(DataError, match=r"breastmnist\.npz: not a file; expected MedMNIST's"):
        mm.find_or_download("breastmnist", 28, tmp_path)


def test_a_failed_download_leaves_no_folder_it_made(tmp_path, monkeypatch):
    """``--data-dir`` (or ``~/tensorflow_datasets``) made for a download that failed was left
    behind, empty; a folder that was there before is kept."""

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="cannot download"):
        mm.download("breastmnist", 28, tmp_path / "data" / "medmnist")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="cannot download"):
        mm.download("breastmnist", 28, tmp_path / "data" / "medmnist")
    assert [p.name for p in tmp_path.iterdir()] == ["data"] and not any(
        (tmp_path / "data").iterdir()
    )


class _Served(io.BytesIO):
    """A response: ``body``, then ``fail`` raised by the read after it (a cut connection)."""

    def __init__(self, body: bytes, headers: dict[str, str], fail: BaseException | None = None):
        super().__init__(body)
        self.headers, self.fail = headers, fail

    def read(self, size: int = -1) -> bytes:
        chunk = super().read(size)
        if not chunk and self.fail is not None:
            raise self.fail
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (http.client.BadStatusLine("GARBAGE"), "BadStatusLine: GARBAGE"),
        (
            _Served(b"x" * 10, {"Content-Length": "20"}, http.client.IncompleteRead(b"", 10)),
            "the connection closed 0 bytes into a part, after 10 bytes",
        ),
        (
            _Served(b"x" * 10, {}, TimeoutError("timed out")),
            "timed out, after 10 bytes",
        ),
        (
            _Served(b"x" * 10, {}, ConnectionResetError(104, "Connection reset by peer")),
            "[Errno 104] Connection reset by peer, after 10 bytes",
        ),
        (
            _Served(b"x" * 10, {"Content-Length": "20"}),
            "the server sent 10 of the 20 bytes it announced",
        ),
        (
            _Served(b"<html>", {"Content-Type": "text/html; charset=utf-8"}),
            "the server answered with an HTML page, not the file",
        ),
    ],
)
def test_a_download_the_network_fails_is_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, answer, why
):
    """A body cut off (a reset, a stall, a chunked body ended early) or a malformed status
    line was a traceback (http.client's errors are no OSError; the read loop was not
    guarded); a short body or an HTML page was only an MD5 mismatch."""

    def urlopen(*a, **k):
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError) as err:
        mm.find_or_download("breastmnist", 28, tmp_path)
    assert str(err.value).startswith(
        f"cannot download {mm.URL.format(stem='breastmnist')} ({why}); "
    )
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_a_download_names_the_file_not_the_server(tmp_path, monkeypatch):
    """The disk filling was "cannot download <url>; download it yourself" (exit 2), or
    "?: no space left" for the weights: an OSError naming the file, the disk's failure."""
    import errno

    from medft_jax import download

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _Served(b"x" * 10, {}))
    with pytest.raises(OSError) as err:
        download.fetch(
            "https://x.invalid/f", Path("/dev/full"), algorithm="md5", timeout=1, label="f"
        )
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, "/dev/full")


def test_a_killed_downloads_temporary_file_is_removed_by_the_next(tmp_path, monkeypatch):
    """A SIGKILL mid-download left its .part file for good; a live one (fresh) is kept."""
    import os

    from medft_jax import download

    dest = tmp_path / "breastmnist.npz"
    old, live = tmp_path / ".breastmnist.npz.abc.part", tmp_path / ".breastmnist.npz.def.part"
    other = tmp_path / ".chestmnist.npz.abc.part"
    for p in (old, live, other):
        p.write_bytes(b"partial")
    stale = os.stat(old).st_mtime - download.STALE_SECONDS - 1
    os.utime(old, (stale, stale))
    os.utime(other, (stale, stale))
    tmp = download.temporary(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, tmp.name])
    # Readable as a file open() makes (mkstemp's 0600 followed it into a shared data dir).
    from medft_jax.atomic import FILE_MODE

    assert tmp.stat().st_mode & 0o777 == FILE_MODE


def test_a_malformed_content_length_is_no_traceback(tmp_path, monkeypatch):
    """``Content-Length: 5000, 5000`` (http.client accepts it) was a ValueError traceback:
    the length is not trusted, and the file's hash decides."""
    served = _Served(b"x" * 10, {"Content-Length": "5000, 5000"})
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: served)
    with pytest.raises(DataError, match=r"breastmnist\.npz.*: MD5 [0-9a-f]{32} does not match"):
        mm.download("breastmnist", 28, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_downloads_part_is_removed_where_the_file_or_the_ported_weights_are_found(
    tmp_path, monkeypatch
):
    """Loads and runs find the .npz (or the ported weights) and never ask for the download
    again, which alone removed a killed one's .part: a 548 MB VGG-19 part stayed for good.
    A dry run's look changes nothing."""
    import os

    import numpy as np

    import weights_port
    from medft_jax import download
    from medft_jax.checkpoints import pretrained

    def stale_part(folder: Path, name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".{name}.x1y2.part"
        part.write_bytes(b"partial")
        when = part.stat().st_mtime - download.STALE_SECONDS - 1
        os.utime(part, (when, when))
        return part

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    (data / "medmnist").mkdir(parents=True)
    np.savez(
        data / "medmnist" / "breastmnist.npz",
        **{
            f"{s}_{k}": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            if k == "images"
            else np.arange(n)[:, None] % 2
            for s, n in (("train", 8), ("val", 4), ("test", 4))
            for k in ("images", "labels")
        },
    )
    part = stale_part(data / "medmnist", "breastmnist.npz")
    assert mm.find_local("breastmnist", 28, data) is not None and part.exists()  # a look
    mm.load_medmnist("medmnist/breastmnist", data_dir=data, crop_size=32, progress=False)
    assert not part.exists()

    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "cache"))
    slot = weights_port.default_checkpoint("resnet50")
    slot.parent.mkdir(parents=True, exist_ok=True)
    slot.write_bytes(b"ported")  # found by its existence, as a run finds it
    name = weights_port.fetch.WEIGHTS_URLS["resnet50"].rsplit("/", 1)[-1]
    part = stale_part(tmp_path / "cache" / "torchvision", name)
    assert pretrained._imagenet("resnet50", warn=False) == slot
    assert not part.exists()


def test_a_server_trickling_bytes_is_given_up_in_one_line(tmp_path, monkeypatch):
    """A byte every half second met every per-read timeout: a 548 MB file would have taken
    months without a word. Fewer than 256 KiB in 120 s gives up, naming what came."""
    from medft_jax import download

    class Trickle(_Served):
        def read(self, size: int = -1) -> bytes:
            return b"x"

    clock = iter(range(0, 10**6, 7))  # seconds: 7 between reads
    monkeypatch.setattr(download.time, "monotonic", lambda: float(next(clock)))
    served = Trickle(b"", {"Content-Length": "1000000"})
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: served)
    with pytest.raises(DataError) as e:
        mm.download("breastmnist", 28, tmp_path)
    assert "the server sent 18 bytes in 126 s, after 18 bytes: too slow to finish" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    # The chunk that completes the announced length is no slow download, however late.
    from medft_jax.download import fetch

    clock = iter(range(0, 10**6, 7))
    body = b"x" * 18  # its last byte at 126 s
    done = tmp_path / "done"
    served = Trickle(b"", {"Content-Length": str(len(body))})
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: served)
    reads = iter([b"x"] * len(body) + [b""])
    monkeypatch.setattr(Trickle, "read", lambda self, size=-1: next(reads))
    assert fetch("https://x.invalid/f", done, algorithm="md5", timeout=1, label="f") == (
        hashlib.md5(body).hexdigest()
    )
