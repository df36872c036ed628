"""The Hydra config tree of fsx (conf/ in the repository, the package `fsx.conf` once installed)."""
