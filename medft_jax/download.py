"""One file fetched over HTTP(S) into a temporary file, failures said in one line.

Shared by MedMNIST's ``.npz`` files (:mod:`medft_jax.data.medmnist`) and
torchvision's checkpoints (:mod:`weights_port.fetch`). What the network does
wrong (no connection, a reset or a stall halfway, a malformed answer, an HTML
page in place of the file, a body shorter than announced) is a
:class:`DownloadError` naming the URL; what the local disk does wrong (full, a
size limit) is an ``OSError`` naming the file, which the command lines report
as the disk's failure (exit 1), not the server's. Both callers check the
file's hash before renaming it into place, so nothing half-fetched is ever read.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from medft_jax import atomic
from medft_jax.errors import UserError, naming_os_errors

STALE_SECONDS = 600.0
"""A temporary file untouched this long is a killed download's (a live one writes what
arrives, and :data:`SLOW_WINDOW_BYTES` ends one slower), and is removed when the file is
next asked for (:func:`remove_killed`)."""


SLOW_WINDOW_SECONDS = 120.0
SLOW_WINDOW_BYTES = 256 * 1024
"""A download that receives fewer than this many bytes in this many seconds is given up
(about 2 KB/s): a server trickling a byte at a time never met the per-read timeout, and
a 548 MB file would have taken months without a word."""


class DownloadError(UserError):
    """The server or the network failed a download. ``connected``: the server answered
    (the failure came after the first byte was asked for)."""

    def __init__(self, url: str, why: str, *, connected: bool):
        super().__init__(f"cannot download {url} ({why})")
        self.url, self.why, self.connected = url, why, connected


def remove_killed(dest: Path) -> None:
    """Removes the temporary files killed downloads of ``dest`` left (SIGKILL runs no
    cleanup): called whenever ``dest`` is asked for, found or downloaded (called only
    before a download, a 548 MB VGG-19 ``.part`` stayed for good beside the file a later
    download cached)."""
    now = time.time()
    for old in Path(dest).parent.glob(f".{Path(dest).name}.*.part"):
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > STALE_SECONDS:
                old.unlink()


def temporary(dest: Path) -> Path:
    """A new temporary file beside ``dest`` (``.<name>.<random>.part``), after removing the
    ones killed downloads of ``dest`` left (:func:`remove_killed`)."""
    remove_killed(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    # mkstemp's 0600 would follow the file into place: a shared data dir's other users
    # could not read it. The mode open() gives a new file under the umask instead.
    os.chmod(tmp, atomic.FILE_MODE)
    return Path(tmp)


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None)  # URLError's, or an HTTPError's status text
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, http.client.IncompleteRead):
        return f"the connection closed {len(err.partial):,} bytes into a part"
    text = str(reason if reason is not None else err) or type(err).__name__
    return (
        text
        if isinstance(err, OSError | urllib.error.URLError)
        else f"{type(err).__name__}: {text}"
    )


def fetch(url: str, path: Path, *, algorithm: str, timeout: float, label: str) -> str:
    """Writes the body at ``url`` into ``path``; returns its ``algorithm`` hex digest.

    ``timeout``: seconds any one connect or read may wait; besides, fewer than
    :data:`SLOW_WINDOW_BYTES` in :data:`SLOW_WINDOW_SECONDS` gives up. A progress bar
    (``label``) shows on a terminal only.
    """
    digest = hashlib.new(algorithm)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        # An HTTP error status is the server's answer (a 500, a moved file), not "offline?"
        answered = isinstance(e, urllib.error.HTTPError)
        raise DownloadError(url, _reason(e), connected=answered) from None
    headers = getattr(response, "headers", None) or {}
    with response:
        if str(headers.get("Content-Type", "")).startswith("text/html"):
            raise DownloadError(
                url, "the server answered with an HTML page, not the file", connected=True
            )
        length = str(headers.get("Content-Length") or "").strip()
        announced = int(length) if length.isdigit() and int(length) > 0 else None
        got = 0
        # What has arrived, not a whole MiB at a time: a stall's "after N bytes" counts
        # what came before it, and the slow-server rule sees each byte.
        read = response.read1 if isinstance(response, http.client.HTTPResponse) else response.read
        window_start, window_got = time.monotonic(), 0
        with (
            naming_os_errors(path),  # the write's, and the close's flush
            open(path, "wb") as f,
            tqdm(total=announced, unit="B", unit_scale=True, desc=label, disable=None) as bar,
        ):
            while True:
                try:
                    chunk = read(1 << 20)
                except (http.client.HTTPException, OSError) as e:
                    why = f"{_reason(e)}, after {got:,} bytes"
                    raise DownloadError(url, why, connected=True) from None
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
                window_got += len(chunk)
                complete = announced is not None and got >= announced
                elapsed = time.monotonic() - window_start
                if window_got >= SLOW_WINDOW_BYTES:
                    window_start, window_got = time.monotonic(), 0
                elif elapsed > SLOW_WINDOW_SECONDS and not complete:  # the last chunk: done
                    why = (
                        f"the server sent {window_got:,} bytes in {elapsed:.0f} s, after "
                        f"{got:,} bytes: too slow to finish"
                    )
                    raise DownloadError(url, why, connected=True)
    if announced is not None and got < announced:
        why = f"the server sent {got:,} of the {announced:,} bytes it announced"
        raise DownloadError(url, why, connected=True)
    return digest.hexdigest()
