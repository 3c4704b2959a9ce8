"""How a run can end: the outcomes :class:`medft_jax.session.Session` reports.

Kept apart from the session (no JAX import), so the command lines that
only print outcomes load fast.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import Any

from medft_jax import results
from medft_jax.config import RunConfig
from medft_jax.errors import find_os_error, os_error_line

DONE, SKIPPED, FAILED_BEFORE, STOPPED = "done", "skipped", "failed before", "stopped"
"""Outcomes of a run that went as asked: trained to its end, its record already there,
its failure note already there, or trained up to its step budget."""
BUSY, DIVERGED, UNAVAILABLE = "busy", "diverged", "unavailable"
"""Outcomes that leave the run to later: another process holds it, its loss became
non-finite (a note is written), its dataset could not be loaded."""
REFUSED = "refused"
"""The run's own settings do not fit its data (a batch larger than the training split):
this run only; its dataset loaded, and the other runs on it go on."""
UNRESUMABLE = "cannot resume"
"""The run's resume checkpoint is damaged: it is left as it is (no note, the run stays
to do) for the user to start the run over; the other runs are not affected."""
DAMAGED = "damaged record"
"""The run's record was edited or cut short: it is left as it is for the user to restore
or delete; the other runs are not affected."""
DISK_FULL, OUT_OF_MEMORY = "disk full", "out of memory"
"""Outcomes that end the session: every later run would fail the same way."""
FATAL = (DISK_FULL, OUT_OF_MEMORY)


@dataclasses.dataclass
class Outcome:
    """How one run ended."""

    config: RunConfig
    """The run's config, identified (fingerprints filled in) when its data loaded."""
    kind: str
    record: dict[str, Any] | None = None
    """The record (``done`` and ``skipped``)."""
    error: str = ""
    """One line saying what went wrong (the other kinds)."""
    exception: BaseException | None = None
    seconds: float = 0.0
    """Wall-clock seconds of this call."""

    @property
    def name(self) -> str:
        return results.run_name(self.config.to_dict())

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL


def fatal_kind(e: BaseException) -> tuple[str, str] | None:
    """``(kind, line)`` for an error every later run would hit too, else None."""
    os_err = find_os_error(e)
    if os_err is not None and os_err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DISK_FULL, os_error_line(os_err) or str(os_err)
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return OUT_OF_MEMORY, text.strip().splitlines()[0][:200]
    return None
