"""The benchmark's parts; `loadtest/bench.py` is its driver (loadtest/README.md lists each module's
job): options, requests, /proc readers, in-process ORT, server and client processes, the served
scenarios as data, interleaved slices, the points at the defaults, in-process cost scenarios,
verdicts and the report."""
