"""The one exception the data package raises for bad input on disk or in options.

A :class:`DataError` message is one line that names the file, field or flag
at fault and what was expected, so a user can fix their copy of a dataset
without reading a traceback.
"""

from __future__ import annotations

from medft_jax.errors import UserError


class DataError(UserError):
    """A dataset on disk, or an option describing it, is not what was expected."""


class BatchTooLarge(DataError):
    """A run's ``--batch-size`` larger than its training split: that run's setting, not the
    data's fault (a run of the same session at a smaller batch may use the data)."""

    def __init__(self, batch_size: int, examples: int, of: str) -> None:
        self.batch_size, self.examples, self.of = batch_size, examples, of
        super().__init__(self.said("--batch-size"))

    def __reduce__(self) -> tuple[type, tuple[int, int, str]]:
        # An exception pickles as its class and args; this one's are not its __init__'s.
        return (type(self), (self.batch_size, self.examples, self.of))

    def said(self, setting: str) -> str:
        """The refusal naming the ``setting`` at fault (a sweep has a grid's
        ``batch_size``, no ``--batch-size``)."""
        return (
            f"{setting} {self.batch_size} is larger than the {self.examples} training "
            f"examples of {self.of}"
        )


class ImageMissing(DataError):
    """A listed image file is not on disk: a moved or partial copy, never skipped as bad."""


class NotABadFile(DataError):
    """A file this setup cannot read as asked, though nothing is wrong with the file: a
    decoder that is not installed, a flag that does not apply to it, values the decoding
    rules refuse until their range is declared (12-bit data in 16-bit files), a layout
    or colour model the toolkit cannot read faithfully.
    Never skipped by ``--skip-bad-images``: every file of its kind would be, and the
    dataset silently shrink, often by class (the dark images, the scanner of one site)."""


class BitsUndeclared(NotABadFile):
    """A 16-bit file whose values fit in a few bits, refused until ``--bits-stored`` says
    what they are. ``path`` and ``what`` (the file's kind and values, without the
    advice) let a source that cannot take the flag (a paper task) say what it can do
    instead, rather than point at a flag it refuses."""

    def __init__(self, message: str, *, path: object, what: str) -> None:
        super().__init__(message)
        self.path = path
        self.what = what
