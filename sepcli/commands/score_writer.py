"""Writing scored records to stdout, for both `sepcli score` paths (local and --ray).

Lines are written in input order as they come; a record that could not be scored stops the run
with a one-line error naming it (what came before it is written) unless --skip-bad passes it
through with its error field. :meth:`RecordWriter.close` says on stderr what was replaced or
passed through.
"""

from __future__ import annotations

import sys

from sepcli.cli_common import warn
from sepcli.errors import InputError


class RecordWriter:
    """Counts what it writes: ``written`` lines, ``bad`` ones (with an error), ``tokens`` scored."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.out = sys.stdout.buffer
        self.written = self.bad = self.tokens = 0

    def write(self, where: str, parts: list[bytes], error: str | None, tokens: int = 0) -> None:
        """One output line (``parts`` joined), or InputError for a bad record (not --skip-bad)."""
        if error is not None and not self.skip_bad:
            self.out.flush()
            raise InputError(
                f"{where}: {error} ({self.written} records written before it; --skip-bad "
                "passes such records through)"
            )
        for part in parts:
            self.out.write(part)
        self.out.write(b"\n")
        self.written += 1
        self.bad += error is not None
        self.tokens += tokens

    def flush(self) -> None:
        self.out.flush()

    def close(self, replaced: int) -> None:
        """The warnings after the run's summary line."""
        self.flush()
        if replaced:
            warn(f"{replaced} undecodable byte sequence(s) replaced with U+FFFD")
        if self.bad:
            warn(f"{self.bad} record(s) could not be scored; passed through with an error field")
