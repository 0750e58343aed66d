"""gerbil: train, evaluate and publish suites of compute-optimal tiny language models.

Importing gerbil touches no GPU, no network and no global RNG; submodules import torch lazily where
they need it (`gerbil.plan` and `gerbil.model.config` never do).
"""
__version__ = "0.1.0"
