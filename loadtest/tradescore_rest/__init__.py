"""loadtest/rest_bench.py's parts: HTTP and gRPC load generators, the peers (Flask, MLServer), the report."""
