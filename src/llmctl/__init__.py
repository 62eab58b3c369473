"""llmctl: run several local LLM servers side by side, supervised."""

__version__ = "0.2.0"
