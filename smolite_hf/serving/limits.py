"""What one request may ask for and how many the server takes at once; checked before a request reaches the model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeLimits:
    """Caps of `smolite serve` (each has a command-line option of the same name)."""

    max_message_chars: int = 1000  # per message; longer is a 400
    max_messages: int = 64  # per conversation
    max_new_tokens: int = 100  # the cap on `max_tokens` / `max_new_tokens` (a 400 above it); the window may allow fewer
    max_running: int = 16  # sequences decoded together, sharing each forward pass
    max_waiting: int = 32  # requests queued behind the running ones; past it, 429 with Retry-After
    max_body_bytes: int = 256 * 1024  # a larger request body is a 413

    def __post_init__(self):
        for name in ("max_message_chars", "max_messages", "max_new_tokens", "max_running", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeLimits.{name} must be at least 1, got {getattr(self, name)}.")
        if self.max_waiting < 0:
            raise ValueError(f"ServeLimits.max_waiting must be at least 0, got {self.max_waiting}.")


__all__ = ["ServeLimits"]
