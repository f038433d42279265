"""sluice: a Layer 4 load balancer."""

__version__ = "0.1.0"
