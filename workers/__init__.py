"""sdq workers: the Celery worker that runs diffusers pipelines and uploads results.

torch, diffusers and transformers are imported only by the device and pipeline code:
`workers.device`, `workers.pipelines`, `workers.generation`, `workers.builtin`, `workers.builtin_parts` (the
parts the tiny models share), `workers.builtin_families`, `workers.builtin_flux` (the tiny Flux.1 models),
`workers.builtin_fullsize` (the full-size built-ins), `workers.builtin_loras` (the tiny LoRA adapters),
`workers.builtin_video` (the tiny video models), `workers.cpu_paths` (a CPU worker's dtype and backend),
`workers.checkpoints`, `workers.transformer_files` (a transformer in its own file: Flux, GGUF), `workers.sources`
(a hub download), `workers.preview` (live previews' tiny decoders) and `workers.simulate`. The other modules
import none of them themselves (the app, the runner and capability use them through those modules); the request
options' worker hooks (`workers/options/`) import diffusers only inside the methods that build pipelines.
"""
