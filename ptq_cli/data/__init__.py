"""Calibration and evaluation data: lazy readers for .npy/.npz/.pb files, ONNX model-zoo
test_data_set_* folders and image folders, checked against the model's inputs, and re-batching.

    ds = open_dataset("calib/", input_specs(model), image=ImagePreprocess.preset("imagenet-tf"))
    for batch in iter_batches(ds, input_specs(model), batch_size=8):
        session.run(None, batch.feeds)
"""

from ptq_cli.data.batching import effective_batch_size, iter_batches
from ptq_cli.data.dataset import Batch, Dataset, Sample
from ptq_cli.data.discover import open_dataset

__all__ = ["Batch", "Dataset", "Sample", "effective_batch_size", "iter_batches", "open_dataset"]
