"""The `hyper` command line: argument parsing and output, nothing else."""
