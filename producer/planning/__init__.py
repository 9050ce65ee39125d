"""From a checked request to a planned job: items expanded (prompts, items, sweeps, prompt files), the model
family's rules and the uploads checked (`family`, `inputs`, `sweep`, `formats`), the job recorded and routed
(`jobs`), and a dry run's quote of the same plan (`quote`)."""
