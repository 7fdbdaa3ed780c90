"""kubeplex.placement: where replicas run (pure: no I/O, no Kubernetes, no clock reads)."""
