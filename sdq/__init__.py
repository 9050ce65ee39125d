"""sdq: a distributed job queue for Stable Diffusion image generation.

This package holds what the producer and the workers share, torch-free: the contract at the top
(job and item records, task names, queue naming, defaults, settings), Redis state in `sdq.state`,
scheduling decisions in `sdq.scheduling`, the request options' table in `sdq.options`. Nothing here
imports the producer, the workers, storage or the CLI (the top-level `cli` package), which stand on it.
"""
from __future__ import annotations

__version__ = "0.1.0"
