"""What env.json records: the code version, library versions and hardware a result needs to be
reproduced (written by the training loop through `RunDir.write_env`, read back with `RunDir.read_env`)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def env_info(device: Any = "cpu") -> dict:
    """Code version, library versions and hardware: what a result needs to be reproduced."""
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    here = Path(__file__).resolve().parent
    git = {}
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=5)
        if sha.returncode == 0:
            git = {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    info: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv, "git": git or None,
        "python": platform.python_version(), "platform": platform.platform(), "hostname": platform.node(),
        "packages": {p: version(p) for p in ("gerbil-lab", "torch", "numpy", "safetensors", "tokenizers",
                                                "transformers", "pyyaml", "tqdm")},
        "device": str(device), "cpu_count": os.cpu_count(),
    }
    try:
        import torch  # lazy: torch

        info.update(torch_threads=torch.get_num_threads(), cuda=torch.version.cuda)
        if str(device).startswith("cuda"):
            p = torch.cuda.get_device_properties(torch.device(device))
            info.update(gpu=p.name, gpu_memory=p.total_memory, capability=f"{p.major}.{p.minor}",
                        cudnn=torch.backends.cudnn.version())
    except ImportError:
        pass
    return info
