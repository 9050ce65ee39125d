"""Testing aids built into the worker (off unless asked for): fault points and simulated devices."""
