"""kubeplex.autoscaler: how many replicas each ModelService needs (pure decision core)."""
