"""Synthetic calibration samples for data-free quantization, drawn to match each input.

    image input (4-D, 1 or 3 channels)  "dead leaves" images: overlapping discs of random grey/colour
                                        with power-law radii (the occlusion model whose statistics
                                        match natural images: edges, flat regions, 1/f spectrum),
                                        in 0..255, then the declared preprocessing (--preset, --scale,
                                        --mean/--std ...; raw 0..255 when none is declared)
    integer input read by a Gather      token ids, uniform over the table's rows
    integer input used as a mask        all ones: it reaches (through Cast and data movement) a
                                        multiplication, a subtraction, an Equal/Not or a Where's
                                        condition, as attention masks and mean-pooling masks do
    boolean input                       all ones (true)
    other inputs                        standard normal (float) or zeros (integer)

Unlike white noise (what quantizers without data fall back to), dead-leaves images give the
first layers the edges and flat areas they were trained on, so the activation ranges they
produce look like those of real images. Every sample is fixed by (seed, its index).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx

from ptq_cli.data.dataset import Dataset, Entry
from ptq_cli.data.images import ImagePreprocess, image_geometry
from ptq_cli.errors import DataError
from ptq_cli.model.io import InputSpec

DEFAULT_SAMPLES = 32
_FREE_SIZE = 224  # an image dimension the model leaves free
_FREE_LENGTH = 32  # a sequence dimension the model leaves free


@dataclass(frozen=True)
class SyntheticReader:
    specs: tuple[InputSpec, ...]
    image: ImagePreprocess | None
    vocab: dict[str, int]  # integer input -> rows of the table it indexes
    seed: int
    masks: frozenset[str] = frozenset()  # integer inputs used as masks (all ones)

    def read(self, entry: Entry) -> dict[str, np.ndarray]:
        index = int(entry.source.rsplit("#", 1)[1])
        rng = np.random.default_rng([self.seed, index])
        return {spec.name: self._one(spec, rng, entry.source) for spec in self.specs}

    def rows(self, entry: Entry) -> int:
        return 1

    def _one(self, spec: InputSpec, rng: np.random.Generator, source: str) -> np.ndarray:
        shape = tuple(1 if i == 0 and d is None else (d or _FREE_LENGTH) for i, d in enumerate(spec.shape))
        if spec.dtype.kind == "f" and is_image(spec):
            return _image_input(spec, self.image or ImagePreprocess.preset("raw"), rng, source)
        if spec.dtype.kind in "iu":
            if spec.name in self.vocab:
                return rng.integers(0, self.vocab[spec.name], shape).astype(spec.dtype)
            return np.ones(shape, spec.dtype) if spec.name in self.masks else np.zeros(shape, spec.dtype)
        if spec.dtype.kind == "b":
            return np.ones(shape, spec.dtype)
        return rng.standard_normal(shape).astype(spec.dtype)


def synthetic_dataset(model: onnx.ModelProto, specs: list[InputSpec], image: ImagePreprocess | None,
                      *, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> Dataset:
    """`samples` synthetic samples for `specs`, described as what they stand for."""
    vocab = _vocabularies(model, specs)
    masks = _masks(model, specs, vocab)
    reader = SyntheticReader(tuple(specs), image, vocab, seed, masks)
    entries = tuple(Entry(f"synthetic sample #{i}", ()) for i in range(samples))
    return Dataset(entries, reader, tuple(specs), describe(specs, image, vocab, samples, seed, masks))


def describe(specs, image, vocab, samples: int, seed: int, masks=frozenset()) -> str:
    parts = []
    for spec in specs:
        if spec.dtype.kind == "f" and is_image(spec):
            how = f"dead-leaves images, {image.describe()} preprocessing" if image else \
                "dead-leaves images as raw 0..255 pixels (no --preset declared)"
        elif spec.name in vocab:
            how = f"token ids uniform in [0, {vocab[spec.name]})"
        elif spec.dtype.kind in "iub":
            how = "ones (a mask)" if spec.name in masks else "ones" if spec.dtype.kind == "b" else "zeros"
        else:
            how = "standard normal"
        parts.append(f"{spec.name}: {how}")
    return f"none: data-free, {samples} synthetic samples (seed {seed}; " + "; ".join(parts) + ")"


def is_image(spec: InputSpec) -> bool:
    if len(spec.shape) != 4:
        return False
    return spec.shape[1] in (1, 3) or spec.shape[3] in (1, 3)


def _vocabularies(model: onnx.ModelProto, specs: list[InputSpec]) -> dict[str, int]:
    """Rows of the constant table each integer input indexes through a Gather (token embeddings)."""
    tables = {t.name: list(t.dims) for t in model.graph.initializer}
    vocab = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in tables:
            rows = tables[node.input[0]][0] if tables[node.input[0]] else 0
            if rows and node.input[1] in {s.name for s in specs if s.dtype.kind in "iu"}:
                vocab[node.input[1]] = min(vocab.get(node.input[1], rows), rows)
    return vocab


# What a mask meets once it is made float or broadcast: it scales, offsets or selects values
# (Less/Greater are left out: a length compared with a Range is no mask).
_MASK_USES = {"Mul", "Sub", "Equal", "Not", "And", "Or", "ReduceSum"}
# Ops that carry a tensor through as their first input (a shape operand is not carried).
_CARRIERS = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Expand", "Identity", "Slice", "Transpose", "Flatten"}


def _masks(model: onnx.ModelProto, specs: list[InputSpec], vocab: dict[str, int]) -> frozenset[str]:
    """The integer inputs used as masks, found by following the graph (never by their names): one
    that reaches, through Cast and data movement, an op that scales, offsets or selects with it."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = set()
    for spec in specs:
        if spec.dtype.kind not in "iu" or spec.name in vocab:
            continue
        todo, seen = [spec.name], set()
        while todo and spec.name not in found:
            tensor = todo.pop()
            for node in consumers.get(tensor, []):
                if node.op_type in _MASK_USES or (node.op_type == "Where" and node.input[0] == tensor):
                    found.add(spec.name)
                elif node.op_type in _CARRIERS and node.input[0] == tensor and node.output[0] not in seen:
                    seen.add(node.output[0])
                    todo.append(node.output[0])
    return frozenset(found)


def _image_input(spec: InputSpec, preprocess: ImagePreprocess, rng: np.random.Generator, source: str) -> np.ndarray:
    try:  # optional: the images extra
        from PIL import Image
    except ImportError:
        raise DataError("synthetic images need Pillow: pip install 'ptq-cli[images]'") from None
    _, channels, height, width = image_geometry(spec, preprocess.layout, source)
    height, width = height or _FREE_SIZE, width or _FREE_SIZE
    # Drawn at the model's size: resizing and cropping a synthetic image would only blur it.
    preprocess = replace(preprocess, resize=None, crop=None)
    pixels = dead_leaves(rng, height, width, channels)
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
    return preprocess.apply(image, spec, source).astype(spec.dtype, copy=False)


def dead_leaves(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    """A uint8 [H, W, C] dead-leaves image: discs with radii ∝ r^-3 over [size/64, size/3],
    each painted over the ones before until the canvas is covered about three times, in colours
    near a random grey (natural colours are strongly correlated across channels), slightly
    shaded, with a little sensor noise."""
    size = min(height, width)
    r_min, r_max = max(1.0, size / 64), max(2.0, size / 3)
    mean_area = np.pi * 2 * r_min**2 * np.log(r_max / r_min) / (1 - (r_min / r_max) ** 2)
    count = int(np.clip(3 * height * width / mean_area, 20, 3000))
    u = rng.random(count)
    radii = 1.0 / np.sqrt(u / r_max**2 + (1 - u) / r_min**2)  # inverse CDF of p(r) ∝ r^-3
    canvas = np.empty((height, width, channels), np.float32)
    canvas[:] = rng.uniform(0, 255)
    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    for r in radii:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        y0, y1 = max(0, int(cy - r)), min(height, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(width, int(cx + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = ys[y0:y1] - cy, xs[:, x0:x1] - cx
        inside = dy**2 + dx**2 <= r * r
        colour = np.clip(rng.uniform(0, 255) + rng.normal(0, 30, channels), 0, 255)
        slope = rng.normal(0, 20, 2) / r  # a gentle shading across the disc
        shade = (slope[0] * dy + slope[1] * dx)[inside]
        canvas[y0:y1, x0:x1][inside] = colour[None, :] + shade[:, None]
    canvas += rng.normal(0, 2.0, canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
