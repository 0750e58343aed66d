"""Where and how fast a run trains: the device, the precision, the micro-batch, the device's peak FLOP/s.

CUDA with bf16 → bf16 autocast; older CUDA (T4, RTX 20xx) → fp16 autocast + GradScaler; CPU → fp32, or
bf16/fp16 autocast on request (the emulation the tests use for the CUDA paths).
"""
from __future__ import annotations

import torch

from gerbil import plan as planlib
from gerbil.errors import GerbilError
from gerbil.model.config import ModelConfig


def pick_device(name: str) -> torch.device:
    if name in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GerbilError(f"device {name!r} requested but CUDA is not available")
    return dev


def choose_precision(device: torch.device, requested: str = "auto") -> tuple[str, torch.dtype | None, bool]:
    """(name, autocast dtype or None, use GradScaler) for a device.

    CUDA with bf16 → bf16 autocast; CUDA without (T4, RTX 20xx) → fp16 autocast + GradScaler (loss
    scaling, overflow steps skipped and counted); CPU → fp32 (CPU autocast is slow and only for tests).
    """
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {requested!r} (auto, fp32, bf16, fp16)")
    if requested == "auto":
        if device.type != "cuda":
            requested = "fp32"
        else:
            requested = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if requested == "fp32":
        return "fp32", None, False
    if requested == "bf16":
        return "bf16", torch.bfloat16, False
    return "fp16", torch.float16, device.type == "cuda"


def auto_micro_batch(model_cfg: ModelConfig, device: torch.device, seq_len: int, seqs_per_step: int,
                     autocast_dtype: torch.dtype | None, loss_impl: str) -> int:
    """Largest power-of-two micro-batch (≤ 64 sequences and ≤ one step) whose training step fits.

    CUDA: try a forward + backward at each size from the top, keep the first whose peak memory stays
    under 85% of the device (headroom for the optimizer state, fragmentation and compile). CPU: at most
    8k tokens per micro-batch (the head's chunks dominate memory there, and bigger buys no speed).
    """
    top = 1
    while top * 2 <= min(64, seqs_per_step):
        top *= 2
    if device.type != "cuda":
        return max(1, min(top, 8192 // seq_len))
    from gerbil.model.loss import lm_loss
    from gerbil.model.model import GPT

    model = GPT(model_cfg).to(device)
    total_mem = torch.cuda.get_device_properties(device).total_memory
    mb = top
    while mb > 1:
        try:
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.zeros(mb, seq_len, dtype=torch.long, device=device)
            with torch.autocast("cuda", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = lm_loss(model(x), model.lm_head.weight, model.lm_head.bias, x, impl=loss_impl,
                               vocab_size=model_cfg.vocab_size)
            loss.backward()
            peak = torch.cuda.max_memory_allocated(device)
            model.zero_grad(set_to_none=True)
            if peak < 0.85 * total_mem - 3 * 4 * model_cfg.n_params():  # params + grads + Adam m, v
                break
        except torch.cuda.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
        mb //= 2
    del model
    torch.cuda.empty_cache()
    return mb


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak dense FLOP/s of the device from `gerbil.plan.GPUS` (None: CPU or unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    for key, gpu in planlib.GPUS.items():
        if key.upper().replace(" ", "") in name.replace(" ", ""):
            return gpu.peak_flops
    return None
