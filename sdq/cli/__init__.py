"""The `sdq` command line."""
