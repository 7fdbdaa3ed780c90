"""kubeplex.runtime: the process inside every serving pod (engine supervisor, router, metrics)."""
