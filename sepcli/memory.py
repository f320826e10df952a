"""Memory of this process: current and peak resident set size, and the peak of a block of work
(CUDA allocator peak on GPU, peak RSS growth on CPU).

On CUDA the figure is ``torch.cuda.max_memory_allocated`` (weights included, as the paper
reports it). On CPU there is no resettable peak counter, so a background thread samples the
resident set size every ``interval_s`` and reports the peak *growth* over the RSS at entry
(weights already loaded are not counted). Sampling can miss a spike shorter than the interval.
"""

from __future__ import annotations

import os
import resource
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def return_freed_memory() -> None:
    """Hand memory freed by Python and torch back to the OS (glibc keeps freed heap pages
    mapped; elsewhere this does nothing)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_mb() -> float:
    """Current resident set size in MiB."""
    return rss_bytes() / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size so far in MiB."""
    return peak_rss_bytes() / 2**20


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes`` and ``pm.kind``."""

    def __init__(self, device: torch.device, interval_s: float = 0.01):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_growth"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak_rss = max(self._peak_rss, rss_bytes())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._base = self._peak_rss = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def read(self) -> int:
        """Peak so far (also valid inside the block)."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        self._peak_rss = max(self._peak_rss, rss_bytes())
        return max(0, self._peak_rss - self._base)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        else:
            self._stop.set()
            self._thread.join()
        self.peak_bytes = self.read()
        return False
