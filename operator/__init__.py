"""kubeplex.operator: the kopf operator and the local backend (the I/O shell)."""
