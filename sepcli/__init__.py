"""sepcli: long-context work with local LLMs (SepLLM streaming, GemFilter document QA)."""

__version__ = "0.1.0"
