"""Small helpers every subsystem uses: input checks, declared options, threads."""
