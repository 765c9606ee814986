"""What this machine's onnxruntime integer kernels do with a pair sum beyond 16 bits, found by
behaviour, never by parsing CPU flags (an emulator, a hypervisor that masks flags, or a future
kernel would make flags lie).

The probe is one MatMulInteger: activations [255, 255] against int8 weights [127, 127]. A
kernel that accumulates in 32 bits (x86 VNNI/AMX, ARM) returns 64770; one that adds each pair of
products in a saturating 16-bit lane (x86 AVX2 / AVX-512 without VNNI: `vpmaddubsw`) returns 32767.
"""

from __future__ import annotations

import enum
import functools
import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_cli.model.sessions import SessionSpec, open_session

_EXACT_SUM = 2 * 255 * 127
_SATURATED_SUM = 32767

log = logging.getLogger(__name__)


class HostKernels(enum.Enum):
    """The class of u8·s8 integer kernels onnxruntime runs on this machine."""

    EXACT = "exact 32-bit"  # every pair sum exact: full-range int8 weights are safe here
    SATURATING = "saturating 16-bit pairs"  # a pair sum beyond int16 clips: only pair-bounded weights are exact

    @property
    def saturates(self) -> bool:
        return self is HostKernels.SATURATING


def _probe_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.full((2, 1), 127, np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "pair_sum_probe",
        [helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [1, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [1, 1])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@functools.lru_cache(maxsize=1)
def host_kernels() -> HostKernels:
    """Probe once per process (a few milliseconds)."""
    session = open_session(_probe_model(), SessionSpec(threads=1))
    total = int(session.run(None, {"a": np.full((1, 2), 255, np.uint8)})[0].reshape(-1)[0])
    if total not in (_EXACT_SUM, _SATURATED_SUM):  # a kernel neither class describes: assume the worse
        log.warning("onnxruntime's pair-sum probe returned %d (exact: %d, saturated: %d); treating this "
                    "host's integer kernels as saturating", total, _EXACT_SUM, _SATURATED_SUM)
    return HostKernels.EXACT if total == _EXACT_SUM else HostKernels.SATURATING
