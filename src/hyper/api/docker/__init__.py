"""The Docker Engine API, served by hyperd so that the `docker` CLI and docker-py work unmodified."""
