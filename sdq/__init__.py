"""sdq: a distributed job queue for Stable Diffusion image generation.

This package holds the torch-free contract shared by the producer and the workers
(job and item schema, task names, queue naming, job state in Redis) and the `sdq` CLI.
"""
from __future__ import annotations

__version__ = "0.1.0"
