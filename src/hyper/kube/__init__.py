"""`hyper kube play|down`: Kubernetes Pod manifests run as Hyper pods.

`manifest` parses and checks a manifest's documents (`fields` reads them
field by field and parses quantities), `plan` says what hyperd is asked for;
all pure. hyper.cli.kube_commands drives hyperd.
"""
