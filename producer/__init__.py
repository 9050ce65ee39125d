"""sdq producer: the thin Flask submitter. Imports no torch or diffusers."""
from __future__ import annotations

from producer.app import create_app

__all__ = ["create_app"]
