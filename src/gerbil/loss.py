"""`gerbil.loss.lm_loss` — the documented import path; the loss lives in `gerbil.model.loss`."""
from gerbil.model.loss import IGNORE_INDEX, lm_loss

__all__ = ["lm_loss", "IGNORE_INDEX"]
