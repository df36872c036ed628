"""Datasets, class partitions, samplers and transforms. The only package that reads annotation files."""
