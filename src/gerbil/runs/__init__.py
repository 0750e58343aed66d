"""Runs on disk, read and written without torch: the run directory and every file name in it (rundir),
what env.json records (env), stored evaluation results (evals) and the index of runs (registry). The
verbs, `suite/`, `fit/` and `eval/` read runs through this package; it imports none of them."""
