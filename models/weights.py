"""Published weights: which releases we can serve, fetching them, checking them, and reading them.

Every published release the runtime can serve (MeanVC, Pocket TTS, LongLive on Wan2.1) is one
:class:`PublishedModel`: the hub files it needs, their licences, the family it serves as, and two hooks
its family module provides, ``check`` (shapes and dtypes from the files' headers, nothing run) and
``load`` (build a :class:`~models.base.Generator` from the folder). The table below names the module
that holds each release's entry, so this file never imports a family.

A weights folder carries a manifest, ``causalcast-weights.json``, written by :func:`download`: which
release it holds and each file's size and SHA-256 (``/healthz`` shows them). A folder filled by hand
works too: :func:`check` is told the release, and hashes are computed at load.

:func:`download` is the only network code in the project: it runs from ``causalcast weights download``
and nowhere else (tests, CI, ``make serve`` and imports never touch the network).

Reading: :func:`open_safetensors` / :func:`read_tensors` raise :class:`WeightsError` naming the file;
:func:`load_mapped` loads a published state dict into our module through a key mapping, consumes every
tensor and names each missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import WeightsError

MANIFEST = "causalcast-weights.json"

# Release name -> module defining ``PUBLISHED_MODEL`` (a PublishedModel). A module not present in this
# build makes the release "not available" rather than an import error.
PUBLISHED: dict[str, str] = {
    "meanvc": "models.vc.meanvc.published",
    "pocket-tts": "models.tts.pocket.published",
    "longlive": "models.video.wan.published",
}


@dataclass(frozen=True)
class HubFile:
    """One file of a release as published on the hub, and where it lands in the weights folder."""

    repo_id: str
    filename: str  # path inside the hub repository
    license: str  # SPDX id or the licence's name, printed at download
    approx_bytes: int = 0  # for the download plan; 0: unknown
    local_name: str | None = None  # path inside the weights folder (default: ``filename``)
    revision: str | None = None  # a pinned commit, or None for the default branch
    gated: bool = False  # the hub asks the user to accept terms first (log in with a token that has)
    manual_url: str | None = None  # not on the hub: fetched by the user from this page
    optional: bool = False  # a variant (e.g. voice cloning) the release can run without

    @property
    def path(self) -> str:
        """Where the file lives inside the weights folder."""
        return self.local_name or self.filename


@dataclass(frozen=True)
class PublishedModel:
    """A published release the runtime can serve, as the family module describes it."""

    name: str  # "meanvc"
    family: str  # the served model it stands in for: ``<family>:weights=DIR``
    description: str
    files: tuple[HubFile, ...]
    # check(folder) -> problems (file and key named), reading headers only; load(folder, device, **options)
    check: Callable[[Path], list[str]]
    load: Callable[..., Any]
    terms: str = ""  # printed before downloading (licence conditions, gated variants)
    needs_gpu: bool = False  # refuse to serve on a CPU-only device, with this said


def published_model(name: str) -> PublishedModel:
    """The entry of release ``name``; ValueError naming the known ones."""
    module = PUBLISHED.get(name)
    if module is None:
        raise ValueError(f"unknown published weights {name!r}; known: {sorted(PUBLISHED)}")
    try:
        return importlib.import_module(module).PUBLISHED_MODEL
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise ValueError(f"published weights {name!r} are not supported by this build ({module} missing)") from e
        raise


def available() -> dict[str, PublishedModel | None]:
    """Every release in the table, None where this build lacks its module."""
    out: dict[str, PublishedModel | None] = {}
    for name in PUBLISHED:
        try:
            out[name] = published_model(name)
        except ValueError:
            out[name] = None
    return out


# --- manifest ------------------------------------------------------------------------------------------


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest, or None when it has none. WeightsError when it is unreadable."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable manifest ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), str):
        raise WeightsError(f"{path}: manifest has no 'model' name")
    return manifest


def write_manifest(folder: Path, model: PublishedModel, hashes: Mapping[str, str]) -> Path:
    """Record which release the folder holds and each present file's size and SHA-256."""
    files = {}
    for f in model.files:
        local = folder / f.path
        if local.exists():
            files[f.path] = {
                "bytes": local.stat().st_size,
                "sha256": hashes.get(f.path) or sha256_file(local),
                "repo_id": f.repo_id,
                "filename": f.filename,
                "revision": f.revision,
                "license": f.license,
            }
    path = folder / MANIFEST
    path.write_text(json.dumps({"model": model.name, "family": model.family, "files": files}, indent=1))
    return path


def identify(folder: str | os.PathLike, name: str | None = None) -> PublishedModel:
    """Which release a folder holds: ``name`` if given, else its manifest's. WeightsError if neither says."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"weights folder {folder} does not exist")
    manifest = read_manifest(folder)
    if name is None:
        if manifest is None:
            raise WeightsError(
                f"{folder} has no {MANIFEST}: fetch it with `causalcast weights download NAME --dir {folder}`, "
                f"or name the release (published=NAME; known: {sorted(PUBLISHED)})"
            )
        name = manifest["model"]
    elif manifest is not None and manifest["model"] != name:
        raise WeightsError(f"{folder} holds {manifest['model']!r} weights, not {name!r}")
    try:
        return published_model(name)
    except ValueError as e:
        raise WeightsError(str(e)) from e


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


# --- checking ------------------------------------------------------------------------------------------


def check(folder: str | os.PathLike, name: str | None = None, verify_hashes: bool = False) -> list[str]:
    """Problems with a weights folder, each naming the file (and key); empty when it can be served.

    Files present with the manifest's sizes (and hashes when ``verify_hashes``), then the release's own
    check of tensor names, shapes and dtypes from the headers. Nothing is run.
    """
    folder = Path(folder)
    model = identify(folder, name)
    manifest = read_manifest(folder) or {"files": {}}
    problems = []
    for f in model.files:
        local = folder / f.path
        if not local.exists():
            if not f.optional:
                where = f"from {f.manual_url}" if f.manual_url else f"`causalcast weights download {model.name}`"
                problems.append(f"{local}: missing (get it {where})")
            continue
        recorded = manifest["files"].get(f.path)
        if recorded and recorded.get("bytes") not in (None, local.stat().st_size):
            problems.append(f"{local}: {local.stat().st_size} bytes, manifest says {recorded['bytes']} (truncated?)")
        elif recorded and verify_hashes and recorded.get("sha256") and sha256_file(local) != recorded["sha256"]:
            problems.append(f"{local}: SHA-256 differs from the manifest's")
    if problems:
        return problems
    return list(model.check(folder))


def describe(folder: str | os.PathLike, model: PublishedModel) -> dict[str, Any]:
    """What /healthz says about served weights: the release, its folder, each file's hash and licence."""
    folder = Path(folder)
    recorded = (read_manifest(folder) or {"files": {}})["files"]
    files = {}
    for f in model.files:
        local = folder / f.path
        if local.exists():
            sha = (recorded.get(f.path) or {}).get("sha256") or sha256_file(local)
            files[f.path] = {"sha256": sha, "bytes": local.stat().st_size, "license": f.license}
    return {"name": model.name, "dir": str(folder.resolve()), "files": files}


def load_published(family: str, folder: str | os.PathLike, device: str, options: Mapping[str, Any]) -> Any:
    """Build the generator serving ``folder`` as ``family``; WeightsError naming what is wrong.

    ``options`` may name the release (``published``); the rest go to the release's loader.
    """
    options = dict(options)
    model = identify(folder, options.pop("published", None))
    if model.family != family:
        raise WeightsError(f"{folder} holds {model.name!r} weights, a {model.family!r} model, not {family!r}")
    if model.needs_gpu and not str(device).startswith("cuda"):
        raise WeightsError(f"{model.name!r} needs a GPU (serve it with --device cuda); this server runs on {device}")
    problems = check(folder, model.name)
    if problems:
        raise WeightsError(f"{model.name} weights in {folder} cannot be served:\n  " + "\n  ".join(problems))
    generator = model.load(Path(folder), device=device, **options)
    generator.published_weights = describe(folder, model)
    return generator


# --- downloading (the project's only network code) -----------------------------------------------------


def download(name: str, folder: str | os.PathLike, *, include_optional: bool = True, echo=print) -> list[str]:
    """Fetch release ``name`` into ``folder`` with huggingface_hub; returns what is still missing.

    Prints each file's source, size and licence, the release's terms, and instructions for files behind
    a manual link. Writes the manifest. Never called by tests or the server.
    """
    model = published_model(name)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency of transformers/tokenizers
        raise WeightsError("downloading needs huggingface_hub: pip install huggingface_hub") from e
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if model.terms:
        echo(model.terms)
    missing: list[str] = []
    for f in model.files:
        if f.optional and not include_optional:
            continue
        if f.manual_url:
            if not (folder / f.path).exists():
                echo(f"manual: {f.path} ({f.license}) is not on the hub; download it from {f.manual_url} "
                     f"and save it as {folder / f.path}")
                missing.append(f.path)
            continue
        echo(f"fetching {f.repo_id}/{f.filename} (~{_size(f.approx_bytes)}, licence {f.license})"
             + (" [gated: accept the terms on the hub page and log in first]" if f.gated else ""))
        try:
            got = Path(hf_hub_download(f.repo_id, f.filename, revision=f.revision, local_dir=folder / "_hub"))
        except Exception as e:  # the hub's errors (auth, 404, network) are many types; report and go on
            echo(f"  failed: {type(e).__name__}: {e}")
            if not f.optional:
                missing.append(f.path)
            continue
        target = folder / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if got.resolve() != target.resolve():
            os.replace(got, target)
        echo(f"  -> {target} ({_size(target.stat().st_size)})")
    write_manifest(folder, model, {})
    return missing


def _size(num_bytes: int) -> str:
    if num_bytes <= 0:
        return "? bytes"
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return ""


# --- reading tensors -----------------------------------------------------------------------------------


def header_shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype)}`` of a safetensors file from its header alone; WeightsError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size <= 0 or size > 100 * 1024 * 1024 or size + 8 > path.stat().st_size:
                raise ValueError(f"header length {size} does not fit the file")
            header = json.loads(f.read(size))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + size + end > path.stat().st_size:
            raise ValueError(f"tensors end at byte {8 + size + end}, file has {path.stat().st_size} (truncated)")
        return {k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items() if k != "__metadata__"}
    except FileNotFoundError as e:
        raise WeightsError(f"{path}: missing") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{path}: not a valid safetensors file ({e})") from e


def check_shapes(
    path: str | os.PathLike,
    expected: Mapping[str, tuple[int, ...] | None],
    *,
    dtypes: Iterable[str] = ("F32", "F16", "BF16"),
    allow_extra: bool = False,
) -> list[str]:
    """Problems of a safetensors file against expected ``{key: shape}`` (None: any shape), from the header."""
    try:
        found = header_shapes(path)
    except WeightsError as e:
        return [str(e)]
    problems = []
    allowed = set(dtypes)
    for key, shape in expected.items():
        if key not in found:
            problems.append(f"{path}: missing key {key!r}")
        elif shape is not None and found[key][0] != tuple(shape):
            problems.append(f"{path}: {key!r} has shape {list(found[key][0])}, expected {list(shape)}")
        elif found[key][1] not in allowed:
            problems.append(f"{path}: {key!r} has dtype {found[key][1]}, expected one of {sorted(allowed)}")
    if not allow_extra:
        problems += [f"{path}: unexpected key {k!r}" for k in sorted(set(found) - set(expected))]
    return problems


def read_tensors(path: str | os.PathLike, dtype: Any = None) -> dict[str, Any]:
    """All tensors of a safetensors file on the CPU (floating ones cast to ``dtype`` if given)."""
    from safetensors.torch import load_file

    path = Path(path)
    header_shapes(path)  # a clear error for a missing or truncated file before safetensors' own
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise WeightsError(f"{path}: cannot be read ({e})") from e
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return tensors


def read_torch_file(path: str | os.PathLike) -> Any:
    """A ``torch.save`` file (tensors only, no code run) memory-mapped: shapes cost no reading; WeightsError names it.

    For releases published as ``.pt`` pickles (LongLive): ``weights_only`` refuses anything but tensors and
    plain containers, and ``mmap`` leaves the data on disk until a tensor is used.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: missing")
    try:
        return torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise WeightsError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e


@dataclass
class LoadReport:
    """What :func:`load_mapped` did: every published key is in exactly one list."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # keys the mapping deliberately drops (None)


def load_mapped(
    module: Any,
    tensors: Mapping[str, Any],
    rename: Callable[[str], str | None],
    *,
    source: str,
    strict_missing: bool = True,
) -> LoadReport:
    """Load published ``tensors`` into torch ``module`` through ``rename`` (published key -> ours, or None).

    Every tensor must be consumed: a key ``rename`` maps to a name the module lacks is unexpected; every
    parameter and buffer of the module must be filled (unless ``strict_missing`` is off); shapes must
    match. Any fault raises :class:`WeightsError` naming ``source`` and the keys (first 10 of each kind).
    Values are copied into the module's tensors, so its dtype and device stay as built.
    """
    import torch

    own = module.state_dict()
    report = LoadReport()
    unexpected, mismatched, filled = [], [], {}
    for key, value in tensors.items():
        ours = rename(key)
        if ours is None:
            report.ignored.append(key)
            continue
        if ours not in own:
            unexpected.append(f"{key} -> {ours}" if ours != key else key)
        elif tuple(own[ours].shape) != tuple(value.shape):
            mismatched.append(f"{key}: {list(value.shape)} vs ours {ours} {list(own[ours].shape)}")
        elif ours in filled:
            unexpected.append(f"{key} (a second tensor for {ours})")
        else:
            filled[ours] = value
            report.loaded.append(key)
    missing = sorted(set(own) - set(filled)) if strict_missing else []
    if unexpected or mismatched or missing:
        parts = []
        for what, keys in (("unexpected", unexpected), ("wrong shape", mismatched), ("missing", missing)):
            if keys:
                more = f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
                parts.append(f"{what} keys: {', '.join(keys[:10])}{more}")
        raise WeightsError(f"{source}: " + "; ".join(parts))
    with torch.no_grad():
        for ours, value in filled.items():
            own[ours].copy_(value.to(own[ours].dtype))
    return report


# --- torch archives (TorchScript and torch.save files), from their pickled header ------------------------
_STORAGE_DTYPES = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
                   "LongStorage": "I64", "IntStorage": "I32", "BoolStorage": "BOOL", "ByteStorage": "U8",
                   "CharStorage": "I8", "ShortStorage": "I16"}


@dataclass
class ArchiveHeader:
    """What a torch zip archive's pickle says, read without running it or loading a tensor."""

    tensors: dict[str, tuple[tuple[int, ...], str]]  # dotted name -> (shape, dtype)
    attributes: dict[str, Any]  # a TorchScript module's plain attributes (str, int, float, bool), dotted
    torchscript: bool  # has compiled code (torch.jit.save) rather than only pickled data (torch.save)


class _Record:
    """A pickled TorchScript object: its state is kept, its class never imported."""

    def __init__(self, *_args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def torch_archive_header(path: str | os.PathLike) -> ArchiveHeader:
    """Tensor names, shapes and dtypes of a TorchScript or ``torch.save`` zip archive, from ``data.pkl`` alone.

    For a check that reads no tensor data; :func:`read_torch_file` loads a ``torch.save`` file's tensors. A
    restricted unpickler: classes of the archive become plain records, tensors become (shape, dtype),
    nothing else may be imported, no storage is read. Each tensor's storage must be present in the zip.
    WeightsError naming the file when it is missing, truncated, or not such an archive.
    """
    import io
    import pickle
    import zipfile

    path = Path(path)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module.startswith("__torch__"):
                return type(name, (_Record,), {})
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return lambda storage, _offset, size, *_rest: ("tensor", tuple(size), storage)
            if module == "torch._utils" and name == "_rebuild_parameter":
                return lambda data, *_rest: data
            if module == "torch.jit._pickle":
                return lambda value, *_rest: value
            if module == "torch" and name.endswith("Storage") or module == "torch.storage":
                return name
            if module == "collections" and name == "OrderedDict":
                from collections import OrderedDict

                return OrderedDict
            # Anything else (dtypes, devices, a foreign object) becomes an inert record: nothing is imported or
            # run, so an archive with globals we do not know still shows its tensors.
            return type(name, (_Record,), {})

        def persistent_load(self, pid: Any) -> Any:
            _, storage_type, key, _location, numel = pid
            return (storage_type, str(key), int(numel))

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pickles:
                raise ValueError("no data.pkl")
            root = pickles[0][: -len("data.pkl")]
            root_obj = Unpickler(io.BytesIO(archive.read(pickles[0]))).load()
            sizes = {info.filename: info.file_size for info in archive.infolist()}
    except FileNotFoundError as e:
        raise WeightsError(f"{path}: missing") from e
    except (OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, TypeError) as e:
        raise WeightsError(f"{path}: not a readable torch archive ({e})") from e
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    attributes: dict[str, Any] = {}
    missing: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, _Record):
            walk(prefix, value.state)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, tuple) and len(value) == 3 and value[0] == "tensor":
            storage_type, key, _numel = value[2]
            if f"{root}data/{key}" not in sizes:
                missing.append(key)
            dtype = storage_type if isinstance(storage_type, str) else str(storage_type)
            tensors[prefix[:-1]] = (value[1], _STORAGE_DTYPES.get(dtype, dtype))
        elif isinstance(value, (str, int, float, bool)) and prefix:
            attributes[prefix[:-1]] = value

    walk("", root_obj)
    if missing:
        raise WeightsError(f"{path}: storages {missing[:5]} are missing from the archive (truncated?)")
    return ArchiveHeader(tensors, attributes, torchscript=any(n.startswith(f"{root}code/") for n in names))
