"""Export a checkpoint to one folder of deployable files, checked on the way out.

``export_checkpoint`` writes ``model.onnx`` (fp32), ``model.int8.onnx`` (static int8 QDQ), ``model.ort``
and ``model.int8.ort`` (onnxruntime-mobile, fixed batch), ``report.json``, ``MODEL_CARD.md`` and ``web/``
(a page that runs the ONNX files under onnxruntime-web). ``akd_edge.export.command`` runs the stages;
``akd_edge.export.folder`` names the files, decides which folder may be replaced and builds the new one beside
it; ``onnx`` and ``mobile`` hold the conversions, ``web`` the browser page, ``images`` the images the checks
use, ``agreement`` the checks between runtimes, ``provenance`` what the files record of their source. See ``export/README.md`` for the files and
the report's fields.
"""

from akd_edge.export.card import REPORT_FORMAT
from akd_edge.export.command import ExportCheckFailed, export_checkpoint, quiet_libraries
from akd_edge.export.folder import FILES
from akd_edge.export.images import ExportData, load_export_data
from akd_edge.export.provenance import onnx_metadata, run_name

__all__ = [
    "FILES",
    "REPORT_FORMAT",
    "ExportCheckFailed",
    "ExportData",
    "export_checkpoint",
    "load_export_data",
    "onnx_metadata",
    "quiet_libraries",
    "run_name",
]
