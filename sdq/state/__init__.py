"""Redis state, a boundary: the only package that imports `redis`. The key names (`keys`), the
connection (`redisconn`), the job store's Lua scripts (`scripts`, ``lua/``) and its two sides (`jobs`,
`runs`, with `uploads`, `tenantstate`, `streams`; together `store.JobStore`, on the base `base` with the
outbox and the fleet), the outbox (`outbox`), the fleet's worker records (`fleet`), the broker's leases
(`leases`), the fault rules (`faults`), the per-tenant limits (`limits`), idempotency keys
(`idempotency`), the result-cache index (`resultindex`) and the layer's errors (`errors`)."""
