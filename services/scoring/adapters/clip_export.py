"""Turn an open_clip model into two ONNX graphs (image tower, text tower), as a program of its own.

This is the only scoring code that imports torch when the scoring service runs on onnxruntime:
`clip_onnx.exported_clip` runs it (`python -m services.scoring.adapters.clip_export`) as a
short-lived process, so the worker itself never holds torch, torchvision or open_clip (about
730 MB resident, before any weights). On failure the last line of its output is a JSON object
naming the error, for the caller to raise.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # type: ignore[import-untyped]
import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer, _clean_lower

from services.scoring.adapters.clip import OpenClipImageEmbedder
from services.scoring.ports import ModelWeightsUnavailable, ScoringModelError

IMAGE_GRAPH = "image.onnx"
TEXT_GRAPH = "text.onnx"
META = "meta.json"  # written last: a directory without it is an unfinished export
_OPSET = 17
_MOST_ALLOWED_DIFFERENCE = 1e-3  # onnxruntime against torch, float32, on the export's own inputs
_LEAST_INT8_COSINE = 0.99  # an int8 embedding against torch's float32 one, on the export's own inputs


class _ImageTower(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)  # type: ignore[no-any-return]


class _TextTower(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)  # type: ignore[no-any-return]


def export_towers(
    architecture: str, weights: str | None, *, seed: int, offline: bool, directory: str, precision: str = "float32"
) -> dict[str, Any]:
    """Write image.onnx, text.onnx and meta.json into `directory`; return the metadata.

    Each float32 graph is run by onnxruntime on the export's own inputs and compared with torch; a
    difference over 1e-3 fails the export (it would mean the graph does not compute the model).
    With precision "int8" the graphs are then quantized (onnxruntime's dynamic quantization: int8
    weights, activations quantized per batch) and the cosine between each int8 embedding and
    torch's float32 one is recorded; under 0.99 fails the export.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    embedder = OpenClipImageEmbedder(architecture, weights, offline=offline, seed=seed, precision="float32")
    model = embedder.module
    preprocess = dict(model.visual.preprocess_cfg)
    _check_supported(architecture, preprocess)
    size = int(preprocess["size"][0])
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    tokens = open_clip.get_tokenizer(architecture)(["a portrait photo of a person", "a robot in the rain"])
    differences: dict[str, float] = {}
    cosines: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        for name, tower, sample, input_name in (
            (IMAGE_GRAPH, _ImageTower(model), pixels, "pixels"),
            (TEXT_GRAPH, _TextTower(model), tokens, "tokens"),
        ):
            # no inference_mode here: under it, attention takes a fused kernel ONNX has no export for
            torch.onnx.export(
                tower,
                (sample,),
                str(out / name),
                input_names=[input_name],
                output_names=["embedding"],
                dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=_OPSET,
                dynamo=False,
            )
            with torch.no_grad():
                expected = tower(sample).numpy()
            session = onnxruntime.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
            got = session.run(None, {input_name: sample.numpy()})[0]
            differences[name] = float(np.abs(got - expected).max())
            if differences[name] > _MOST_ALLOWED_DIFFERENCE:
                raise ScoringModelError(
                    f"the ONNX export of {architecture}'s {name} differs from torch by {differences[name]:.2g}: "
                    "set LIKENESS_SCORING_CLIP_RUNTIME=torch to run this model in torch instead"
                )
            if precision == "int8":
                cosines[name] = _quantize(out / name, input_name, sample.numpy(), expected)
    meta = {
        "architecture": architecture,
        "weights_label": embedder.weights_label,
        "calibrated": embedder.calibrated,
        "dimension": embedder.dimension,
        "image_size": size,
        "mean": list(preprocess["mean"]),
        "std": list(preprocess["std"]),
        "interpolation": preprocess["interpolation"],
        "context_length": int(tokens.shape[1]),
        "precision": precision,
        "largest_difference_from_torch": differences,
        "int8_lowest_cosine_to_float32": cosines or None,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    (out / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


def _quantize(graph: Path, input_name: str, sample: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> float:
    """Replace `graph` by its int8 version; return the lowest cosine between its rows and torch's float32 rows."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    quantized = graph.with_suffix(".int8.onnx")
    quantize_dynamic(graph, quantized, weight_type=QuantType.QInt8)
    quantized.replace(graph)
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    got = session.run(None, {input_name: sample})[0]
    cosine = float(
        ((got * expected).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))).min()
    )
    if cosine < _LEAST_INT8_COSINE:
        raise ScoringModelError(
            f"int8 {graph.name} drifts from float32 (cosine {cosine:.4f} < {_LEAST_INT8_COSINE}): "
            "use LIKENESS_SCORING_CLIP_PRECISION=float32"
        )
    return cosine


def _check_supported(architecture: str, preprocess: dict[str, Any]) -> None:
    """The ONNX runtime reproduces open_clip's default pipeline only: say so for anything else."""
    tokenizer = open_clip.get_tokenizer(architecture)
    size = preprocess.get("size")
    problems = []
    plain_bpe = isinstance(tokenizer, SimpleTokenizer) and tokenizer.clean_fn is _clean_lower
    if not plain_bpe or tokenizer.reduction_fn:
        problems.append(f"its tokenizer ({type(tokenizer).__name__}) is not CLIP's byte-pair tokenizer")
    if preprocess.get("resize_mode") != "shortest" or preprocess.get("interpolation") not in ("bicubic", "bilinear"):
        problems.append(f"its preprocessing ({preprocess}) is not a shortest-side resize and centre crop")
    if not (isinstance(size, tuple | list) and len(size) == 2 and size[0] == size[1]):
        problems.append(f"its input is not square ({size})")
    if problems:
        raise ScoringModelError(
            f"open_clip {architecture} cannot run on onnxruntime here: {'; '.join(problems)}. "
            "Set LIKENESS_SCORING_CLIP_RUNTIME=torch to run it in torch."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("architecture")
    parser.add_argument("directory")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("float32", "int8"), default="float32")
    parser.add_argument("--offline", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    try:
        export_towers(
            args.architecture,
            args.weights,
            seed=args.seed,
            offline=args.offline,
            directory=args.directory,
            precision=args.precision,
        )
    except ModelWeightsUnavailable as error:
        print(json.dumps({"error": "weights", "message": str(error)}))
        return 3
    except ScoringModelError as error:
        print(json.dumps({"error": "model", "message": str(error)}))
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
