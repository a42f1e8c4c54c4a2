"""The benchmark's parts (loadtest/bench.py is its driver): the floor servers, and the points
measured at the engine's default settings against them in interleaved slices."""
