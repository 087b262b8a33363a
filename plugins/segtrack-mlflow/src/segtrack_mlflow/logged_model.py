"""The exported ONNX model as an MLflow 3 LoggedModel. When the export happens, the fit only stages
its source in the spool (the ONNX file, the input example, what the MLmodel must say): no MLflow
import in the training process (1.5-2 s of a short fit). The shipper then writes it as an MLflow
model folder (a pyfunc that predicts as ``segtrack predict`` does, the ONNX flavour beside it,
signature, input example), creates the LoggedModel, uploads it, finalises it READY and links it to
the run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from segtrack_mlflow.entries import LoggedModel as LoggedModelEntry

MAX_EXAMPLE_ELEMENTS = 1_000_000  # the input example is stored as JSON: leave out big volumes
REGISTRY_ALIAS = "latest-fit"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # copied into the model folder, run by MLflow


SOURCE = "source"  # beside the model folder: what the shipper builds it from


def stage_model_source(onnx_path: str, folder: Path, example: np.ndarray | None, metadata: dict[str, Any]) -> None:
    """What ``write_model_folder`` needs, kept in ``folder.parent / SOURCE`` (the fit's side)."""
    source = folder.parent / SOURCE
    source.mkdir(parents=True)
    try:
        os.link(onnx_path, source / "model.onnx")  # the export is replaced by the next fit, not rewritten
    except OSError:
        shutil.copy2(onnx_path, source / "model.onnx")
    if example is not None:
        np.save(source / "example.npy", example)
    (source / "spec.json").write_text(json.dumps({"metadata": metadata}))


def build_model_folder(folder: Path) -> None:
    """The MLflow model folder from its staged source (the shipper's side); again after a crash
    cut the last build short."""
    if (folder / "MLmodel").is_file():
        return
    source = folder.parent / SOURCE
    shutil.rmtree(folder, ignore_errors=True)
    spec = json.loads((source / "spec.json").read_text())
    example = np.load(source / "example.npy") if (source / "example.npy").is_file() else None
    write_model_folder(str(source / "model.onnx"), folder, example, spec["metadata"])


def write_model_folder(onnx_path: str, folder: Path, example: np.ndarray | None, metadata: dict[str, Any]) -> None:
    """An MLflow model folder for the ONNX file: its pyfunc (``pyfunc_model.py``) predicts masks as
    ``segtrack predict`` does; its ``onnx`` flavour gives mlflow.onnx the bare network (logits)."""
    import warnings

    import mlflow.pyfunc
    import onnx
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    from segtrack import export_metadata

    recorded = export_metadata(Path(onnx_path)) or {}  # what segtrack's export records: dims, channels, ...
    spatial = int(recorded.get("dims") or metadata.get("spatial_dims") or 2)
    channels = int(recorded.get("in_channels") or -1)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, *([-1] * spatial)), "x")]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, *([-1] * spatial)), "mask")]),
        params=ParamSchema([ParamSpec("output", "string", "mask"), ParamSpec("image_dtype", "string", "float32")]),
    )
    small = example is not None and example.size <= MAX_EXAMPLE_ELEMENTS
    with warnings.catch_warnings():  # MLflow's lazily imported pyfunc warns about its own type hints
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            str(folder),
            python_model=str(PYFUNC_CODE),
            artifacts={"onnx_model": onnx_path},  # the key pyfunc_model.py reads
            signature=signature,
            input_example=example.astype(np.float32) if small and example is not None else None,
            metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()},
            pip_requirements=_requirements(),
        )
    # the same file as mlflow.onnx's flavour: mlflow.onnx.load_model(...) gives the network
    model = Model.load(str(folder / "MLmodel"))
    onnx_file = model.flavors["python_function"]["artifacts"]["onnx_model"]["path"]
    model.add_flavor("onnx", onnx_version=onnx.__version__, data=onnx_file, providers=["CPUExecutionProvider"])
    model.save(str(folder / "MLmodel"))


def _requirements() -> list[str]:
    """What loading the pyfunc imports (segtrack brings torch for the windows), pinned as installed."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("segtrack", "onnxruntime", "numpy")]


def send(client: Any, spool: Any, entry: LoggedModelEntry) -> None:
    """Create (once), upload, finalise and link the LoggedModel of ``entry``; register it when
    asked. Replays after a crash reuse the model id kept in the spool's meta."""
    from mlflow.entities import LoggedModelOutput

    local = spool.folder / entry.path
    if (local.parent / SOURCE).is_dir():
        build_model_folder(local)
    models = dict(spool.meta.get("logged_models", {}))
    model_id = models.get(entry.key)
    if model_id is None:
        experiment_id = client.get_run(spool.run_id).info.experiment_id
        model_id = (
            _existing(client, experiment_id, spool, entry) if spool.meta.get(f"model_attempted_{entry.key}") else None
        )
        if model_id is None:
            spool.update_meta(**{f"model_attempted_{entry.key}": True})
            model = client.create_logged_model(
                experiment_id,
                name=entry.name,
                source_run_id=spool.run_id,
                params=entry.params or None,
                tags={
                    **_provenance(client, spool.run_id),
                    **entry.tags,
                    "segtrack.model_key": f"{spool.local_id}/{entry.key}",
                },
                model_type="segmentation",
            )
            model_id = model.model_id
        models[entry.key] = model_id
        spool.update_meta(logged_models=models)
    if local.exists():
        _record_model_id(local, model_id)
        client.log_model_artifacts(model_id, str(local))
    client.finalize_logged_model(model_id, "READY")
    outputs = client.get_run(spool.run_id).outputs
    if model_id not in {o.model_id for o in (outputs.model_outputs if outputs else [])}:  # not on a retry
        client.log_outputs(spool.run_id, [LoggedModelOutput(model_id, entry.step)])
    if entry.register:
        version = _register(client, entry.register, model_id, spool.run_id)
        spool.update_meta(registered={"name": entry.register, "version": version})  # the fit's console says it
    shutil.rmtree(local.parent, ignore_errors=True)


def _provenance(client: Any, run_id: str) -> dict[str, str]:
    """The run's MLflow user/source/git tags, so the Models tab says who made it and from what code."""
    tags = client.get_run(run_id).data.tags
    return {k: v for k, v in tags.items() if k == "mlflow.user" or k.startswith("mlflow.source.")}


def _record_model_id(folder: Path, model_id: str) -> None:
    """The model folder was written before MLflow gave the model its id: fill it into MLmodel."""
    mlmodel = folder / "MLmodel"
    if mlmodel.is_file():
        text = mlmodel.read_text()
        mlmodel.write_text(text.replace("model_id: null", f"model_id: {model_id}", 1))


def _existing(client: Any, experiment_id: str, spool: Any, entry: LoggedModelEntry) -> str | None:
    wanted = f"{spool.local_id}/{entry.key}"
    for model in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{spool.run_id}'"):
        if (model.tags or {}).get("segtrack.model_key") == wanted:
            return model.model_id
    return None


def _register(client: Any, name: str, model_id: str, run_id: str) -> str:
    """A new version of registered model ``name``, and its alias moved to it (aliases, not stages)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    existing = [v for v in client.search_model_versions(f"name = '{name}'") if getattr(v, "model_id", None) == model_id]
    version = (
        existing[0]
        if existing
        else client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id)
    )
    client.set_registered_model_alias(name, REGISTRY_ALIAS, version.version)
    return str(version.version)
