"""The emitters: a plan in, a quantized graph out (QDQ, QOperator, dynamic, weight-only, codebook, bodies)."""
