"""The trainer: Ali-CCP readers and generator, ESMM, the training loop and the ONNX export."""

import logging


def setup_logging() -> None:
    """INFO for this package's command-line tools, WARNING for the libraries they drive."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)
    # torch's ONNX exporter warns about every torchvision op it cannot register.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
