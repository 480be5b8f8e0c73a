"""HTTP front ends of hyperd: its own REST API (and later the Docker Engine API)."""
