"""sdq benchmarks: the queue measured against bare diffusers processes and raw Celery, on the real stack.

Run everything with `python -m bench.run` (`make bench`); each `bench.<name>` module also runs alone
(`python -m bench.overhead --quick`). See bench/README.md.
"""
