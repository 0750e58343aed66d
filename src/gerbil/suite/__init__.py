"""Many runs as one unit: the registry of runs and the seed's results table."""
