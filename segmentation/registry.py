"""The registries of the training library (networks live in ``networks.NETWORKS``)."""

from networks import NETWORKS
from networks.registry import Registry

LOSSES = Registry("loss")
DATASETS = Registry("dataset")
METRICS = Registry("metric")

__all__ = ["Registry", "NETWORKS", "LOSSES", "DATASETS", "METRICS"]
