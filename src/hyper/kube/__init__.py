"""`hyper kube play|down`: Kubernetes Pod manifests run as Hyper pods.

`manifest` parses and checks a manifest's documents (pure), `plan` says
what hyperd is asked for (pure); hyper.cli.kube_commands drives hyperd.
"""
