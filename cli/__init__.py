"""The ``nbcnn`` command-line interface (installed as the package ``nbcnn.cli``)."""
