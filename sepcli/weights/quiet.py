"""Silence transformers while it loads: the CLI owns the terminal."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings


class quiet_transformers:
    """Silence transformers' progress bars and advice while loading (the CLI owns the terminal)."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")
        logging.getLogger("accelerate").setLevel(logging.ERROR)
        # Some bars (weight loading, GGUF dequantising) ignore the switches above.
        self._stderr = contextlib.redirect_stderr(io.StringIO())
        self._stderr.__enter__()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        self._stderr.__exit__(*exc)
        self._warn.__exit__(*exc)
        hf_logging.set_verbosity(self._verbosity)
        hf_logging.enable_progress_bar()
        return False
