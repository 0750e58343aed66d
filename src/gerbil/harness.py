"""`python -m gerbil.harness` and `gerbil.harness.GerbilLM` — the documented paths; the adapter lives
in `gerbil.eval.harness`."""
from gerbil.eval.harness import GerbilLM, main, task_dir, task_manager

__all__ = ["GerbilLM", "task_dir", "task_manager", "main"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
