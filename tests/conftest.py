"""Test-session settings shared by every test."""

import os

# The suite compiles hundreds of small programs once each; XLA's backend optimisation costs
# more compile time than it saves in run time. Benchmarks under experiments/ use the defaults.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
