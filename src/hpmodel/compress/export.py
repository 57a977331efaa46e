"""Export a PyTorch model to ONNX and run it with ONNX Runtime.

``torch.onnx.export`` does the export and ``onnxruntime`` runs the file. We use the
TorchScript exporter (``dynamo=False``): on torch 2.11 and 2.13 alike it exports the
reference ``nn.Sequential`` models in a fraction of a second with one dynamic batch axis,
and needs no ``onnxscript`` (which the GPU machines do not have); the dynamo exporter
gives the same graph for these models but takes seconds and an extra dependency.

Example::

    export_onnx(model, input_shape=(1, 8, 8), path="model.onnx")
    runner = OnnxModel("model.onnx")
    logits = runner(torch.randn(4, 1, 8, 8))      # (4, num_classes) float32 tensor
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpmodel.kernel.errors import HpmodelError

INPUT_NAME, OUTPUT_NAME = "input", "logits"
TOKENS_NAME = "input_ids"  # a language model's int64 input
OPSET = 17
# metadata key of an ONNX file whose value (JSON) lists ORT session config entries the file
# needs to run fast, e.g. {"session.disable_quant_qdq": "1"} for weight-only int8 convolutions
SESSION_CONFIG_KEY = "hpmodel.ort_session_config"


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path,
                input_dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` (eval mode, on the CPU, float32) as ONNX with a dynamic batch axis;
    ``input_dtype=torch.int64`` for a language model (input ``input_ids``, (batch, seq)).

    Example::

        export_onnx(build_model(cfg.model, (1, 8, 8), 10), (1, 8, 8), "out/model.onnx")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model = model.eval().cpu()
    example = torch.zeros(2, *input_shape, dtype=input_dtype)
    name = INPUT_NAME if input_dtype.is_floating_point else TOKENS_NAME
    temp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (example,), str(temp), dynamo=False, opset_version=OPSET,
                          input_names=[name], output_names=[OUTPUT_NAME],
                          dynamic_axes={name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    temp.replace(path)
    model.train(was_training)
    return path


def inference_session(path: str | Path, threads: int = 0):
    """An ONNX Runtime CPU session for ``path``; a missing, corrupt or foreign file is one clear error.

    Session config entries the file records (:func:`set_session_config`) are applied.

    Example::

        session = inference_session("variant/model.onnx", threads=1)
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise HpmodelError(f"ONNX file '{path}' does not exist: run 'hpmodel compress' to write it")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = _open(ort, path, options)
    wanted = session.get_modelmeta().custom_metadata_map.get(SESSION_CONFIG_KEY)
    if not wanted:
        return session
    for key, value in json.loads(wanted).items():
        options.add_session_config_entry(key, str(value))
    return _open(ort, path, options)


def _open(ort, path: Path, options):
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own Fail/InvalidGraph/... classes
        raise HpmodelError(f"'{path}' is corrupt or not an ONNX model ({str(error)[:160]}): "
                           "run 'hpmodel compress' again to rewrite it") from None


def set_session_config(model, entries: dict[str, str]) -> None:
    """Record ORT session config ``entries`` in an ONNX model's metadata; :func:`inference_session`
    applies them when it opens the file.

    Example::

        set_session_config(onnx_model, {"session.disable_quant_qdq": "1"})
    """
    kept = [p for p in model.metadata_props if p.key != SESSION_CONFIG_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = SESSION_CONFIG_KEY, json.dumps(entries, sort_keys=True)


class OnnxModel:
    """Call an ONNX file like a module: float32 tensor (int64 token ids for a language model)
    in, float32 logits out.

    The input shape is checked against the file's declared shape, so a wrong input gives
    one sentence instead of an ONNX Runtime stack trace.

    Example::

        runner = OnnxModel("model.onnx", threads=1)
        runner(torch.randn(64, 1, 8, 8)).shape   # torch.Size([64, 10])
    """

    def __init__(self, path: str | Path, threads: int = 0):
        self.path = Path(path)
        self.session = inference_session(path, threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise HpmodelError(f"'{path}' takes {len(inputs)} inputs; hpmodel models take one: "
                               "export it with hpmodel.compress.export_onnx")
        self.input_name = inputs[0].name
        self.example_shape = tuple(inputs[0].shape[1:])  # without the batch axis
        self.tokens = inputs[0].type == "tensor(int64)"  # a language model's input_ids

    def check_input(self, x) -> None:
        shape = tuple(x.shape[1:])
        if len(shape) != len(self.example_shape) or any(
                isinstance(want, int) and want != got for want, got in zip(self.example_shape, shape)):
            raise HpmodelError(f"input of shape {tuple(x.shape)} does not fit '{self.path}', which "
                               f"expects (batch, {', '.join(map(str, self.example_shape))}): "
                               "reshape the input or use the model's own data set")

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """Logits as a NumPy array (no shape check: for timing loops)."""
        return self.session.run(None, {self.input_name: x})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = x.detach().cpu()
        array = (x.long() if self.tokens else x.float()).contiguous().numpy()
        return torch.from_numpy(self.run_numpy(array)).float()


def check_torch_input(model_input_shape: tuple[int, ...], x: torch.Tensor, where: str) -> None:
    """One clear error when ``x`` (batch, ...) does not match a model's example shape."""
    if tuple(x.shape[1:]) != tuple(model_input_shape):
        raise HpmodelError(f"input of shape {tuple(x.shape)} does not fit {where}, which expects "
                           f"(batch, {', '.join(map(str, model_input_shape))}): reshape the input")


__all__ = ["OnnxModel", "check_torch_input", "export_onnx", "inference_session", "set_session_config"]
