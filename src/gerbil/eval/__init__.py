"""Evaluation exactly as lm-evaluation-harness scores: one Task record per task (tasks/), request
encoding, batched scoring, running and writing results (evaluate), and the harness adapter (harness)."""
