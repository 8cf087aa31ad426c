"""Hand-off: use a trained encoder outside selfsup.

- :func:`export_encoder`: the backbone as a torchvision ``state_dict`` (+ JSON sidecar), a
  ``.safetensors`` file with its settings in the header, or an ONNX graph (dynamic batch).
- :func:`load_encoder`: a ready ``nn.Module`` (eval mode) from a run folder or an export.
- :func:`embed_dataset`: embeddings of a whole dataset to ``.npy`` / ``.npz`` / ``.parquet``.

``selfsup.export``, ``selfsup.embed`` and ``selfsup.load_encoder`` (in ``selfsup.api``) wrap
these; the package is not called ``selfsup.export`` so that it cannot shadow that function.
The optional packages (safetensors, onnx, onnxruntime, pyarrow: ``pip install 'selfsup[export]'``)
are imported only when a format needs them.
"""

from selfsup.handoff.embed import EMBED_FORMATS, SPLITS, embed_dataset
from selfsup.handoff.formats import (
                                     FORMATS,
                                     EncoderInfo,
                                     ExportError,
                                     export_encoder,
                                     load_encoder,
                                     read_onnx_info,
                                     read_safetensors_info,
                                     torchvision_load_code,
                                     torchvision_resnet,
)

__all__ = ["EMBED_FORMATS", "FORMATS", "SPLITS", "EncoderInfo", "ExportError", "embed_dataset", "export_encoder",
           "load_encoder", "read_onnx_info", "read_safetensors_info", "torchvision_load_code", "torchvision_resnet"]
