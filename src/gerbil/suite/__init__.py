"""Suites: many runs as one unit — suite files (spec), a suite directory and where each run stands
(state), workers (runner), `gerbil suite plan` (planning), plots and publishing. Runs themselves, the
registry of runs and the results table are `gerbil.runs`' and `gerbil.eval.table`'s."""
