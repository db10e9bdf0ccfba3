"""Moved to the package `smolite_hf.serving`; `serve` and `ServeLimits` stay importable from here."""

from .serving import ServeLimits, serve

__all__ = ["ServeLimits", "serve"]
