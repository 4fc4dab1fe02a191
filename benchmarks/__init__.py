"""Benchmarks: one script per question, each run from the repository root as
``python -m benchmarks.<name>`` (its docstring gives the protocol and the command; its results go
to ``benchmarks/results/<name>.json`` with the command that printed them). Shared helpers live in
:mod:`benchmarks.common`.
"""
