"""sdq workers: the Celery worker that runs diffusers pipelines and uploads results.

Only `workers.pipelines`, `workers.builtin` and `workers.runner` import torch/diffusers.
"""
