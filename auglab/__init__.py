"""auglab: a DVC-orchestrated PyTorch pipeline for data-augmentation studies on MNIST-family images."""


class AuglabError(Exception):
    """A problem with the user's input or data, reported as one line without a traceback."""
