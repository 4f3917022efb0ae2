"""Services the tests start for real and stop by PID: an OpenAI-compatible server, an HTTP file
server, a single-node SLURM cluster."""
