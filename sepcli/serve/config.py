"""What a server run is configured with, besides the model and the cache (a StreamConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sepcli.errors import ConfigError
from sepcli.generate.decode import GenerateConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """One server's settings.

    Attributes
    ----------
    host, port : where it listens (127.0.0.1 by default; port 0 picks a free one).
    sessions : most conversations (rings) held in memory; the least recently used idle one is
        written to ``session_dir`` (or forgotten without one) when another needs a ring.
    session_dir : folder for conversations that leave memory; None keeps none on disk.
    api_key : when set, every request but /health needs ``Authorization: Bearer KEY``.
    max_body : most bytes a request body may have (413 beyond).
    max_tokens_limit : most tokens a request may ask to generate (400 beyond).
    save_idle : seconds after which an idle conversation is also written to ``session_dir``
        (it stays in memory), so a crash loses none of it; 0 writes only on eviction and exit.
    defaults : what a request that does not say gets: reply length, sampling (greedy).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    sessions: int = 8
    session_dir: Path | None = None
    api_key: str | None = None
    max_body: int = 8 << 20
    max_tokens_limit: int = 4096
    save_idle: float = 60.0
    defaults: GenerateConfig = field(default_factory=lambda: GenerateConfig(512))

    def __post_init__(self) -> None:
        for name, low in (("port", 0), ("sessions", 1), ("max_body", 1), ("max_tokens_limit", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}")
        if self.port > 65535:
            raise ConfigError(f"--port must be at most 65535, got {self.port}")
        if self.save_idle < 0:
            raise ConfigError(f"--save-idle must be >= 0 seconds, got {self.save_idle}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key must not be empty")
        if self.defaults.max_new_tokens > self.max_tokens_limit:
            raise ConfigError(
                f"--max-new-tokens {self.defaults.max_new_tokens} is over --max-tokens-limit "
                f"{self.max_tokens_limit}"
            )
        if self.defaults.max_new_tokens == 0:
            raise ConfigError("--max-new-tokens must be >= 1 for a server (a reply must end)")
        if self.session_dir is not None:
            object.__setattr__(self, "session_dir", Path(self.session_dir).expanduser().resolve())

    @property
    def exposed(self) -> bool:
        """Listening beyond this machine's loopback."""
        return self.host not in LOOPBACK

    def to_dict(self) -> dict:
        return {
            "host": self.host,
            "port": self.port,
            "sessions": self.sessions,
            "session_dir": None if self.session_dir is None else str(self.session_dir),
            "api_key": self.api_key is not None,
            "max_body": self.max_body,
            "max_tokens_limit": self.max_tokens_limit,
            "save_idle": self.save_idle,
            **{f"default_{k}": v for k, v in self.defaults.to_dict().items()},
        }
