"""Running on a cluster: example hostfiles and ``python -m hosts.check`` (see README.md)."""
