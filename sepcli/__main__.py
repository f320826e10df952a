"""Entry point of the `sepcli` command (and `python -m sepcli`).

Kept free of heavy imports: loading torch and transformers takes a second or two, and a Ctrl-C
in that time must end with a one-line message like everywhere else, not a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from sepcli.cli import app

        app()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
