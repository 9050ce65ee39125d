"""sdq workers: the Celery worker that runs diffusers pipelines and uploads results.

torch, diffusers and transformers are imported only by the device and pipeline code:
`workers.device`, `workers.pipelines`, `workers.generation`, `workers.builtin`,
`workers.builtin_families`, `workers.builtin_fullsize` (the full-size built-ins), `workers.builtin_loras`
(the tiny LoRA adapters), `workers.cpu_paths` (a CPU worker's dtype and backend), `workers.checkpoints`,
`workers.sources` (a hub download), `workers.builtin_video` (the tiny video models) and `workers.simulate`.
The other modules import none of them themselves (the app, the runner and capability use them through those modules).
"""
