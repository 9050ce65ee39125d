"""The top layer: the `sdq` command line (`main`, `jobs`, `stack`, `cache`), the HTTP client
(`client`), the local-stack supervisor (`services`) and the local gallery (`gallery`).

The one part of `sdq` that may import `producer`, `workers` or `storage`; nothing below imports it.
"""
