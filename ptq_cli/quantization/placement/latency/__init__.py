"""Latency-aware placement: measure on this machine where INT8 pays, and write the fastest model.

- `machine`: onnxruntime sessions that time whole models (interleaved) and profile them per node;
- `cost`: per-node FP32/INT8 times mapped back to the float graph, and the crossing cost model;
- `candidates`: float prefixes (stem and first few-channel layers) and their estimated time;
- `search`: estimate every candidate, time the best few end to end, choose, and refuse to
  choose anything slower than FP32.
"""

from ptq_cli.quantization.placement.latency.search import (IfSlower, LatencyDecision, Objective, SlowerThanFloat,
                                             search_placement)

__all__ = ["IfSlower", "LatencyDecision", "Objective", "SlowerThanFloat", "search_placement"]
