"""Benchmarks of jaxdef against the PyTorch way (``python -m launch.bench``).

Internal modules, by topic:
  _device: environment, peaks (CPU nominal and measured, GPU datasheet
    table) and XLA's FLOP counts;
  _throughput: attack-step and vote throughput of jaxdef's public API;
  _torch: the same models, weights and randomized smoothing in PyTorch,
    torchattacks' EOTPGD and torch votes (torch imported only on use);
  _study: the default's whole sweep, the reference way vs `run_sweep`;
  _harness: what a benchmark run measures, in order; _report: bench.md.
"""
