"""A worker's presence in the fleet: its capability record and heartbeat, leases on its items, the idle lookout
and the reaper of dead workers' items."""
