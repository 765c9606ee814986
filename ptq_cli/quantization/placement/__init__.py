"""Placement: which nodes are quantized and how (op handlers, patterns, the plan), and the searches
that move that line (latency, drift-budget fallback)."""
