"""sdq workers: the Celery worker that runs diffusers pipelines and uploads results, one process per device.

The folders say what they hold:

- `workers.builtins` — the built-in models, generated locally: the registry (`registry`), the parts the tiny
  models share (`parts`, `textparts`), the SD-family, Flux, video, full-size and LoRA generators;
- `workers.loading` — from a model id to a warm pipeline: the device and dtype (`device`, `cpu_paths`), model
  sources and weight digests (`sources`), single files (`checkpoints`, `transformer_files`), the pipeline cache
  (`pipelines`) and the progress a long load reports (`loadwatch`);
- `workers.running` — making a chunk's images: the runner, the pipeline call (`generation`) and the warm state it
  restores after an error (`warmstate`), the step hook (`progress`), routing and backups, the result cache,
  infotext and watermark, previews, video encoding, uploads;
- `workers.options` — the request options' worker hooks (one per row of `sdq.options`);
- `workers.fleet` — presence in the fleet: the capability record and heartbeat, leases, the idle lookout and the
  reaper of dead workers' items;
- `workers.finishing` — the end of a job: the manifest and contact sheet (`finalize`, `grid`) and webhooks;
- `workers.testing` — the testing aids: fault points and simulated devices;
- and at the top, the composition root (`app`: every part built once), `main` and the Celery `tasks`.

torch, diffusers and transformers are imported only by the device and pipeline code:
`workers.loading.device`, `workers.loading.pipelines`, `workers.loading.offload`,
`workers.running.generation`, `workers.builtins.registry`,
`workers.builtins.parts`, `workers.builtins.families`, `workers.builtins.flux`, `workers.builtins.flux2`,
`workers.builtins.flux2dev`, `workers.builtins.qwen`,
`workers.builtins.fullsize`, `workers.builtins.loras`, `workers.builtins.video`, `workers.builtins.textparts`,
`workers.builtins.zimage`, `workers.loading.cpu_paths`, `workers.loading.checkpoints`,
`workers.loading.transformer_files`, `workers.loading.sources` (a hub download), `workers.running.preview` (live
previews' tiny decoders), `workers.running.warmstate` and `workers.testing.simulate`. The other modules import none of them themselves (the
app, the runner and capability use them through those modules); the request options' worker hooks
(`workers/options/`) import diffusers only inside the methods that build pipelines.
"""
