"""Frame-throughput benchmarks of agentrpc against a real Go agent (Debian's ``serf``).

Run ``python -m benchmarks.run --quick`` (or ``--full``); see ``benchmarks/README.md``.
"""
