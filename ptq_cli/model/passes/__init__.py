"""Graph passes with one contract (base.Pass -> PassResult), one per module."""

from ptq_cli.model.passes.base import Pass, PassError, PassRecord, PassResult, SequenceResult, Sequential
from ptq_cli.model.passes.deprecated_ops import RewriteDeprecatedOps
from ptq_cli.model.passes.div_to_mul import DivToMul
from ptq_cli.model.passes.fold_affine import FoldAffineIntoConv
from ptq_cli.model.passes.fold_batch_norm import FoldBatchNorm
from ptq_cli.model.passes.fold_if import FoldConstantIf
from ptq_cli.model.passes.fold_pad import FoldPad
from ptq_cli.model.passes.global_pools import GlobalPools
from ptq_cli.model.passes.infer_types import InferTypes
from ptq_cli.model.passes.lift_constants import LiftConstants
from ptq_cli.model.passes.modern_ir import ModernIr
from ptq_cli.model.passes.name_nodes import NameNodes
from ptq_cli.model.passes.upgrade_opset import UpgradeOpset

__all__ = ["DivToMul", "FoldAffineIntoConv", "FoldBatchNorm", "FoldConstantIf", "FoldPad", "GlobalPools",
           "InferTypes", "LiftConstants", "ModernIr", "NameNodes", "Pass", "PassError", "PassRecord", "PassResult",
           "RewriteDeprecatedOps", "SequenceResult", "Sequential", "UpgradeOpset"]
