"""Redis state: the key names (`keys`), the connection (`redisconn`), the job store's Lua scripts
(`scripts`, ``lua/``) and its two sides (`jobs`, `runs`, together `store.JobStore`), the fleet's
worker records (`fleet`) and the result-cache index (`resultindex`)."""
