"""Where and how fast a run trains: the device, the precision, the micro-batch, the device's peak FLOP/s.

CUDA with bf16 → bf16 autocast; older CUDA (T4, RTX 20xx) → fp16 autocast + GradScaler; CPU → fp32, or
bf16/fp16 autocast on request (the emulation the tests use for the CUDA paths).
"""
from __future__ import annotations

import logging

import torch

from gerbil import plan as planlib
from gerbil.errors import GerbilError, OptionError
from gerbil.model.config import ModelConfig
from gerbil.model.loss import lm_loss
from gerbil.model import factory

log = logging.getLogger(__name__)


def pick_device(name: str | torch.device | None) -> torch.device:
    """The torch device `name` asks for, checked: ``auto`` (or none) is CUDA when available, else the CPU.
    Every verb's ``--device`` goes through here (train, finetune, eval, sample, predict, export's loading),
    so a device this machine lacks is one line, not torch's AssertionError later: CUDA on a CPU-only
    torch or without a visible GPU, a GPU index past the last one, MPS where it is unavailable, and
    anything other than cpu / cuda[:N] / mps."""
    if name in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise OptionError(f"unknown device {name!r} (cpu, cuda, cuda:N, mps or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise GerbilError(f"device {str(name)!r} requested but CUDA is not available ({why}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GerbilError(f"device {str(name)!r} requested but this machine has {torch.cuda.device_count()} "
                              f"GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise GerbilError(f"device {str(name)!r} requested but MPS is not available; use --device cpu")
    elif dev.type != "cpu":
        raise OptionError(f"unsupported device {str(name)!r} (cpu, cuda, cuda:N, mps or auto)")
    return dev


def choose_precision(device: torch.device, requested: str = "auto") -> tuple[str, torch.dtype | None, bool]:
    """(name, autocast dtype or None, use GradScaler) for a device.

    CUDA with bf16 → bf16 autocast; CUDA without (T4, RTX 20xx) → fp16 autocast + GradScaler (loss
    scaling, overflow steps skipped and counted); CPU → fp32. On a CPU, bf16 and fp16 (with a CPU
    GradScaler) run when asked: slow, but the same code paths as on a GPU — what the tests emulate.
    """
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise OptionError(f"unknown precision {requested!r} (auto, fp32, bf16, fp16)")
    if requested == "auto":
        if device.type != "cuda":
            requested = "fp32"
        else:
            requested = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if requested == "fp32":
        return "fp32", None, False
    if requested == "bf16":
        return "bf16", torch.bfloat16, False
    return "fp16", torch.float16, True


def is_alloc_failure(e: BaseException) -> bool:
    """An out-of-memory in any of its CUDA forms: `OutOfMemoryError`, and the `RuntimeError`s that cuBLAS,
    cuDNN and SDPA workspace allocations raise instead ("CUBLAS_STATUS_ALLOC_FAILED", "out of memory")."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
        "failed to allocate", "Failed to allocate"))


def is_compile_failure(e: BaseException) -> bool:
    """True for an error of torch.compile itself — dynamo, inductor, a backend, a Triton or C++ compile
    (dynamo compiles lazily: these surface at the first forward or backward of a new graph) — and not
    for an out-of-memory or an error the model raises eagerly too."""
    if is_alloc_failure(e):
        return False
    from torch._dynamo.exc import TorchDynamoException  # lazy: importing dynamo loads the compiler stack

    module = type(e).__module__ or ""
    return isinstance(e, TorchDynamoException) or module.startswith(("torch._inductor", "triton"))


def largest_fitting(top: int, fits) -> int:
    """The largest power of two ≤ `top` for which `fits(mb)` is true, trying from the top down. `fits`
    returns False or raises an allocation failure (`is_alloc_failure`) when `mb` does not fit; any other
    exception propagates. If not even 1 fits, a one-line GerbilError says so."""
    mb = top
    while mb >= 1:
        try:
            if fits(mb):
                return mb
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not is_alloc_failure(e):
                raise
        mb //= 2
    raise GerbilError("not even a micro-batch of one sequence fits in the device's free memory; use a shorter "
                      "--seq-len, a smaller model or another GPU")


def auto_micro_batch(model_cfg: ModelConfig, device: torch.device, seq_len: int, seqs_per_step: int,
                     autocast_dtype: torch.dtype | None, loss_impl: str, compile: bool = False) -> int:
    """Largest power-of-two micro-batch (≤ 64 sequences and ≤ one step) whose training step fits.

    CUDA: a forward + backward of the model as training will run it (compiled when training compiles) at
    each size from the top; a size fits when its peak memory, plus the weights, gradients and AdamW's two
    moments, stays under 85% of the memory *free* now (other processes' use counts), with an allocation
    failure of any kind meaning "does not fit". The chosen size is recorded in config.yaml and reused on
    resume (a different free-memory state must not change the accumulation grouping). CPU: at most 8k
    tokens per micro-batch (the head's chunks dominate memory there, and bigger buys no speed).

    Compiling: each size is compiled with ``dynamic=False`` and dynamo is reset after it, so a second size
    never turns the model's graph dynamic and the training run compiles its own static graph afresh; a
    failed compile probes the eager model instead (training falls back the same way).
    """
    top = 1
    while top * 2 <= min(64, seqs_per_step):
        top *= 2
    if device.type != "cuda":
        return max(1, min(top, 8192 // seq_len))

    model = factory.build(model_cfg, seed=0, device=device)  # GPT or T5 (rows split like Blender's, `_probe_inputs`)
    free, _ = torch.cuda.mem_get_info(device)
    budget = 0.85 * free - 4 * 4 * model_cfg.n_params()  # weights + grads + Adam m, v (fp32)
    state = {"compile": compile}

    def fits(mb: int) -> bool:
        try:
            return _probe_step(model, mb, seq_len, autocast_dtype, loss_impl, state["compile"], device) < budget
        except Exception as e:
            if not (state["compile"] and is_compile_failure(e)):
                raise
            log.warning("micro-batch probe: torch.compile failed (%s: %s); probing the eager model",
                        type(e).__name__, " ".join(str(e).split())[:200])
            state["compile"] = False
            return _probe_step(model, mb, seq_len, autocast_dtype, loss_impl, False, device) < budget

    try:
        return largest_fitting(top, fits)
    finally:
        model.to("cpu")  # free the probe's device memory before training allocates its own
        torch.cuda.empty_cache()


def _probe_step(model: torch.nn.Module, mb: int, seq_len: int, autocast_dtype: torch.dtype | None, loss_impl: str,
                compile: bool, device: torch.device) -> int:
    """Peak bytes one training forward + backward of `mb` sequences adds (compiled: a static graph of this
    size alone, discarded afterwards)."""
    run = torch.compile(model, dynamic=False) if compile else model
    try:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        inputs = _probe_inputs(model, mb, seq_len, device)
        with torch.autocast("cuda", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = lm_loss(run(*inputs), model.lm_head.weight, model.lm_head.bias, inputs[-1], impl=loss_impl,
                           vocab_size=model.config.vocab_size)
        loss.backward()
        return torch.cuda.max_memory_allocated(device) - base
    finally:
        model.zero_grad(set_to_none=True)
        if compile:
            import torch._dynamo  # lazy: importing dynamo loads the compiler stack

            torch._dynamo.reset()  # no graph (and no dynamic-shape decision) survives into the next size
        torch.cuda.empty_cache()


def _probe_inputs(model: torch.nn.Module, mb: int, seq_len: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A probe's model inputs (the last one doubles as targets): (B, T) ids, or an encoder-decoder's
    encoder and decoder ids of a row split 11:5 (about Blender's split at 2048, `encdec.default_encoder_len`)."""
    if not model.config.is_encoder_decoder:
        return (torch.zeros(mb, seq_len, dtype=torch.long, device=device),)
    te = max(1, seq_len * 11 // 16)
    return (torch.zeros(mb, te, dtype=torch.long, device=device),
            torch.zeros(mb, max(1, seq_len - te), dtype=torch.long, device=device))


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak dense FLOP/s of the device from `gerbil.plan.GPUS` (None: CPU or unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    for key, gpu in planlib.GPUS.items():
        if key.upper().replace(" ", "") in name.replace(" ", ""):
            return gpu.peak_flops
    return None
