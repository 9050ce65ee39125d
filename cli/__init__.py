"""The top layer: the `sdq` command line (`main`, `jobs`, `stack`, `cache`), the HTTP client
(`client`), the local-stack supervisor (`services`), the local gallery (`gallery`) and a waited job's
progress on a terminal or in a log (`progress`).

The one part of `sdq` that may import `producer`, `workers` or `storage`; nothing below imports it.
"""
