"""Entry point of the `sepcli` command (and `python -m sepcli`).

Kept free of heavy imports: loading torch and transformers takes a second or two, and a Ctrl-C
in that time must end with a one-line message like everywhere else, not a traceback.
"""

from __future__ import annotations

import os
import sys

# OpenMP workers that spin after each parallel region starve each other and everything else on a
# busy machine (issue 29: 2 threads under load ran at 15-25 tok/s spinning, 72-163 sleeping).
# Read by the OpenMP runtime when torch loads it, so it is set before any import of torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    try:
        from sepcli.cli import app

        app()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
