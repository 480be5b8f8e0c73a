"""The runtime: pods, containers and their processes, built on image, vm and agent."""
