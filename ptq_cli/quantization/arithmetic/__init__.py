"""The arithmetic: scale/zero-point, rounding (nearest, stochastic, GPTQ), k-means, bias correction, equalization."""
