"""Model packages: the one place that reads, validates, writes and compares them (layout in
docs/DESIGN.md, "Package folder"). ``vosrt.export`` writes packages through :func:`write_manifest` and
checks them with :func:`compare`; the SDK opens them with :func:`load_package`. What a family's package
holds (graphs, streaming defaults) comes from its row in :mod:`vosrt.sdk.families`.
"""
from __future__ import annotations

import errno
import hashlib
import math
import json
import os
import shlex
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vosrt.sdk import families
from vosrt.sdk.errors import UserError

FORMAT_VERSION = 1
FORMS = ("portable", "plugin")


@dataclass
class Package:
    """A validated model package folder.

    ``graphs`` maps graph name -> form -> absolute ONNX path (only files that exist); ``streaming`` holds
    the manifest's streaming settings completed with the defaults above; ``engines`` is the manifest's
    ``engines`` entry (added by ``vosrt build``) or ``{}``.
    """

    path: Path
    manifest: dict
    family: str
    variant: str
    height: int
    width: int
    stride: int
    graphs: dict[str, dict[str, Path]]
    streaming: dict
    dims: dict = field(default_factory=dict)
    engines: dict = field(default_factory=dict)

    def __fspath__(self) -> str:
        """Its folder: ``vosrt.sdk.load(load_package(...))`` opens it (it was refused with the whole manifest)."""
        return str(self.path)

    @property
    def forms(self) -> list[str]:
        """Forms every graph of the family is available in (``portable`` first)."""
        return [f for f in FORMS if all(f in self.graphs[g] for g in families.get(self.family).graph_names)]

    def graph_path(self, graph: str, form: str) -> Path:
        """Path of ``graph`` in ``form``; UserError when the package lacks it."""
        if graph not in self.graphs or form not in self.graphs[graph]:
            raise UserError(f"package {self.path}: no '{form}' form of graph '{graph}' "
                            f"(available forms: {', '.join(self.forms) or 'none'})")
        return self.graphs[graph][form]

    def axis_label(self, graph: str, name: str, axis: int) -> str | None:
        """What a dynamic axis of ``graph``'s input or output ``name`` counts: ``"objects"``, ``"memory"``
        (or another label) from the manifest's ``io.GRAPH.dynamic_axes``; for packages whose manifest lacks
        them, the family table's (:mod:`vosrt.sdk.families`)."""
        axes = ((self.manifest.get("io") or {}).get(graph) or {}).get("dynamic_axes") or {}
        label = (axes.get(name) or {}).get(str(axis))
        if label:
            return label
        io = families.get(self.family).graphs.get(graph)
        return (io.dynamic_axes.get(name) or {}).get(axis) if io is not None else None

    @property
    def quantization(self):
        """How ``vosrt quantize`` made this INT8 package (manifest ``quantization``: method, ``source_package``,
        ...); None for a package it did not make."""
        return self.manifest.get("quantization")

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint the package was exported from (manifest ``source.checkpoint``), if recorded.
        A relative path is taken relative to the package folder."""
        source = self.manifest.get("source") or {}
        ck = source.get("checkpoint")
        if not ck:
            return None
        ck = Path(ck)
        return ck if ck.is_absolute() else self.path / ck

    def other_network(self, model, variant: str | None) -> str | None:
        """How ``model`` (of ``variant``, the checkpoint's model name) differs from the network the package's graphs
        were exported from, completing "CHECKPOINT holds ...": another variant, or other widths (``dims``). None
        when it is the same, or the manifest records neither (a package made in memory)."""
        if self.manifest.get("variant") and variant and variant != self.variant:
            return f"a '{variant}' model, but {self.path} is a '{self.variant}' package"
        dims = {k: int(v) for k, v in (getattr(model, "dims", None) or {}).items()}
        differing = sorted(k for k in self.dims if k in dims and dims[k] != self.dims[k])
        if differing:
            return f"a model of other widths than {self.path}: " + ", ".join(
                f"{k} {dims[k]} (package: {self.dims[k]})" for k in differing)
        return None

    @classmethod
    def in_memory(cls, family: str, height: int, width: int, stride: int = 16, variant: str | None = None,
                  streaming: dict | None = None, config: dict | None = None) -> "Package":
        """A package with no files, for a backend built from an in-memory model (the torch backend
        during training validation): the family's graphs, its streaming defaults with ``streaming``."""
        row = families.get(family)
        return cls(path=Path("<in memory>"), manifest={"family": family, "config": dict(config or {})},
                   family=family, variant=variant or family, height=int(height), width=int(width),
                   stride=int(stride), graphs={g: {} for g in row.graph_names},
                   streaming={**row.streaming, **(streaming or {})})


SHIPPED_DIR = Path(__file__).resolve().parent / "models"


def shipped_packages() -> list[str]:
    """Names of the model packages installed with vosrt (``vosrt.sdk.load("stcn-lite")`` opens one)."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "manifest.json").is_file())


def resolve(path: str | Path) -> Path:
    """The folder ``path`` names: an existing path as given, else the shipped package of that name
    (a bare name such as ``stcn-lite``). UserError listing the shipped names when neither exists."""
    given = Path(path)
    if given.exists():
        return given
    if len(given.parts) == 1 and (SHIPPED_DIR / given.name / "manifest.json").is_file():
        return SHIPPED_DIR / given.name
    shipped = ", ".join(shipped_packages()) or "none"
    raise UserError(f"model package not found: {path} (not a folder; shipped packages: {shipped})")


def read_manifest(path: str | Path) -> tuple[Path, dict]:
    """(package folder, manifest dict) of the package at ``path`` (its folder, its manifest.json or
    the name of a shipped package), with a UserError saying what to do when it is missing or
    unreadable."""
    if not isinstance(path, (str, os.PathLike)):
        import reprlib
        raise UserError(f"model package: expected a folder path or a shipped package's name (str or Path), got "
                        f"{type(path).__name__} {reprlib.repr(path)}; for example vosrt.sdk.load('stcn-lite')")
    given, path = Path(path), resolve(path)
    # A bare name that is also a folder here is taken as that folder; say so when the folder is not a package
    # but a shipped package has the name.
    shipped = SHIPPED_DIR / given.name
    shadowed = (f"; the shipped package '{given.name}' is {shipped} (the '{given.name}' in the working folder "
                f"hides it)" if len(given.parts) == 1 and path == given and (shipped / "manifest.json").is_file() else "")
    if path.is_file() and path.name == "manifest.json":
        path = path.parent
    if not path.is_dir():
        raise UserError(f"model package should be a folder holding manifest.json, got the file {path}{shadowed}")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{path} is not a model package: it has no manifest.json (create one with `vosrt export`)"
                        f"{shadowed}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{manifest_path} is not valid JSON: {err}") from None
    except RecursionError:
        raise UserError(f"{manifest_path} is not a vosrt manifest: its JSON is nested too deeply to read") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    return path, manifest


def held_manifest(folder: Path) -> dict | None:
    """The manifest of the package an output ``folder`` already holds: None where it has no manifest.json, {}
    where that file is not a manifest that can be read (a package broken or not vosrt's)."""
    if not (folder / "manifest.json").is_file():
        return None
    try:
        return read_manifest(folder)[1]
    except UserError:
        return {}


def refuse_replacing(folder: Path, held: dict, doing: str) -> None:
    """UserError for an --out ``folder`` holding the package ``held`` (its manifest) that ``doing`` ("exporting a
    stcn model", "writing the INT8 package") must not replace: its manifest would be replaced and its graphs no
    longer be a package, so a mistyped --out lost another model's package without a word."""
    family, variant = held.get("family"), held.get("variant")
    words = (["INT8"] if held.get("quantization") else []) + ([family] if isinstance(family, str) else [])
    kind = ("an " if words[:1] == ["INT8"] else "a ") + " ".join([*words, "package"])
    if isinstance(variant, str):
        kind += f" ({variant})"
    raise UserError(f"--out {folder} holds {kind}; {doing} there would replace it. Give another --out folder, or "
                    f"remove that package first if it is no longer wanted (`rm -r {shlex.quote(str(folder))}`)")


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Write ``folder/manifest.json`` atomically (a reader sees the old or the new file, never half)."""
    path = Path(folder) / "manifest.json"
    text = json.dumps(manifest, indent=2) + "\n"
    return replace_file(path, lambda tmp: tmp.write_text(text))


def replace_file(path: str | Path, write) -> Path:
    """Write ``path`` through ``write(temporary path)`` and move the result into place in one rename: a
    reader (or an interrupted writer) sees the old file or the new one, never half of one, and a link
    planted at ``path`` is replaced, not written through."""
    tmp = stage_file(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(Path(path).parent)
    return Path(path)


def partial_file(path: str | Path) -> tuple[int, Path]:
    """(open OS handle, path) of a new hidden file beside ``path`` to be renamed onto it once written:
    ``.STEM.partial-XXXX.SUFFIX`` (``mkstemp``: never an existing file or link; ``path``'s extension last, for
    writers that choose a format by it)."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.partial-", suffix=path.suffix, dir=path.parent)
    return handle, Path(name)


def writable_folder(folder: str | Path, flag: str, give: str) -> list[Path]:
    """``folder`` made (with its parents, :func:`make_folders`) and checked to take new files, before the work whose
    results go there: a file in its place, a folder that cannot be made, or one that takes no new file (read-only, no
    permission, a pseudo file system like /proc) is a UserError naming ``flag`` and saying what to ``give`` instead
    (e.g. "a folder you can write"). Returns the folders it made (:func:`remove_made` takes them away again)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():   # mkdir said only "[Errno 17] File exists"
        raise UserError(f"{flag} {folder} is a file, not a folder; give {give}")
    try:
        made = make_folders(folder)
    except OSError as err:
        raise UserError(f"{flag}: cannot create folder {folder} ({err.strerror or err}); give {give}") from None
    try:
        with tempfile.TemporaryFile(prefix=".probe-", dir=folder):
            pass
    except OSError as err:
        remove_made(folder, made)
        raise UserError(f"{flag}: cannot write files in {folder} ({err.strerror or err}); give {give}") from None
    return made


def output_folder(folder: str | Path, flag: str) -> Path:
    """``folder`` as the system finds it once its folders exist: resolved, so that ``missing/..`` is the folder
    holding ``missing`` (which exists: a package there is seen, and a failed run never takes it for one it made). A
    link to nothing is refused (``flag`` named), as mkdir refused it: its target is not made."""
    if Path(folder).is_symlink() and not Path(folder).exists():
        raise UserError(f"{flag} {folder} is a link to nothing ({os.readlink(folder)}); give a folder, or remove the "
                        "link")
    return Path(os.path.realpath(folder))


def make_folders(folder: str | Path) -> list[Path]:
    """Make ``folder`` and its missing parents, as ``mkdir(parents=True, exist_ok=True)`` does, one by one along its
    resolved path (``missing/..`` is the folder holding ``missing``, which exists: nothing to make). Returns the
    folders this call made, ``folder`` first; one another process made meanwhile is not among them. What it made is
    removed again if it fails part-way."""
    if Path(folder).is_symlink() and not Path(folder).exists():   # as mkdir: a dangling link is not followed
        raise FileExistsError(errno.EEXIST, "File exists (a link to nothing)", str(folder))
    resolved = Path(os.path.realpath(folder))
    missing = []
    for path in (resolved, *resolved.parents):
        if path.exists():
            break
        missing.append(path)
    made: list[Path] = []
    try:
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir():
                    raise
                continue   # made by another process meanwhile: not this call's to remove
            made.insert(0, path)
    except BaseException:
        remove_made(resolved, made)
        raise
    return made


def remove_made(folder: str | Path, made: list[Path]) -> None:
    """Undo what a failed run made (:func:`make_folders`' list): ``folder`` (its output folder), with what it holds,
    where the run made it; each parent it made only while it is empty (another run may have put its own files there
    meanwhile: kept, with their folders). Only a folder this run made is ever removed with its contents."""
    resolved = Path(os.path.realpath(folder))
    for path in made:
        if path == resolved:
            shutil.rmtree(path, ignore_errors=True)
            continue
        try:
            path.rmdir()
        except OSError:
            pass   # not empty (or gone): left as it is


def stage_file(path: str | Path, write, sync: bool = True) -> Path:
    """A new temporary file beside ``path`` (:func:`partial_file`) written by ``write(temporary path)``, with
    the mode ``path`` would get, and flushed to the disk unless ``sync`` is false (one file of thousands, whose
    loss in a crash costs nothing but a rerun); ``os.replace`` it onto ``path`` when all that belongs together is
    written. Removed again when ``write`` fails."""
    handle, tmp = partial_file(path)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, new_file_mode(path))
        if sync:
            sync_file(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def sync_file(path: str | Path) -> None:
    """Flush ``path``'s data to the disk (fsync). A file renamed into place only after this cannot be found
    empty or half written under its final name after a power cut or a crash of the machine."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def sync_folder(folder: str | Path) -> None:
    """Make the renames into ``folder`` durable (fsync of the folder). A file system that cannot sync a
    folder (some network and FUSE ones refuse with EINVAL) is left as it is: the renames stand as it keeps them."""
    try:
        handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def new_file_mode(path: Path) -> int:
    """The mode a file written at ``path`` gets: the replaced file's, else what open() would give (0666
    less the umask, read from /proc: os.umask would change it process-wide for a moment)."""
    try:
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode):
            return stat.S_IMODE(info.st_mode)
    except OSError:
        pass
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def compare(actual: np.ndarray, expected: np.ndarray) -> dict:
    """How far ``actual`` is from ``expected`` (same shape): ``{"max_abs", "max_rel"}`` for floats, where
    max_rel = max|a − e| / max|e|; ``{"mismatch_fraction"}`` for integer label maps (arg-max flips only
    where two probabilities tie to rounding). The one comparison of parity checks and engine checks."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape} != expected {expected.shape}")
    if np.issubdtype(expected.dtype, np.integer):
        return {"mismatch_fraction": float(np.mean(actual != expected))}
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    peak = float(np.abs(expected).max()) if expected.size else 0.0
    return {"max_abs": max_abs, "max_rel": max_abs / peak if peak > 0 else max_abs}


def compare_outputs(names, outputs, expected) -> dict:
    """``{output: compare(...)}``; a label map beside a ``prob`` output (background first) also gets ``flip_margin``:
    at the pixels whose label differs, the largest margin by which the reference prefers its own label to the one
    given (its probability of that label minus its probability of the given one; 1 for a label it has no
    probability of). Rounding flips a label only where that margin is within the probabilities' error;
    :func:`vosrt.export.cli_check.print_report` fails the rest (an ArgMax turned ArgMin differed on every pixel,
    and the check passed)."""
    report = {name: compare(np.asarray(out), np.asarray(ref)) for name, out, ref in zip(names, outputs, expected)}
    given = dict(zip(names, outputs))
    reference = dict(zip(names, expected))
    if "labels" in report and "prob" in reference and "mismatch_fraction" in report["labels"]:
        report["labels"]["flip_margin"] = flip_margin(np.asarray(given["labels"]), np.asarray(reference["labels"]),
                                                      np.asarray(reference["prob"], np.float64))
    return report


def flip_margin(labels: np.ndarray, reference: np.ndarray, prob: np.ndarray) -> float:
    """See :func:`compare_outputs`: ``labels``, ``reference`` ``[1, H, W]`` (or ``[H, W]``), ``prob`` ``[O+1, 1, H, W]``."""
    pixels = np.flatnonzero(labels.reshape(-1) != reference.reshape(-1))
    if not len(pixels):
        return 0.0
    planes = prob.reshape(prob.shape[0], -1)
    given, wanted = labels.reshape(-1)[pixels].astype(np.int64), reference.reshape(-1)[pixels].astype(np.int64)
    inside = (given >= 0) & (given < len(planes)) & (wanted >= 0) & (wanted < len(planes))
    margin = np.ones(len(pixels))
    margin[inside] = planes[wanted[inside], pixels[inside]] - planes[given[inside], pixels[inside]]
    return float(margin.max())


def _require(manifest: dict, key: str, kind, where: Path):
    if key not in manifest:
        raise UserError(f"{where}: manifest has no '{key}' entry; re-export the package with `vosrt export`")
    value = manifest[key]
    if not isinstance(value, kind):
        raise UserError(f"{where}: manifest '{key}' should be a {getattr(kind, '__name__', kind)}, "
                        f"got {type(value).__name__}")
    return value


def load_package(path: str | Path) -> Package:
    """Read ``path/manifest.json`` and check it names a known family, a resolution that is a multiple of
    its stride, and existing ONNX files for every graph of the family in at least one form."""
    path, manifest = read_manifest(path)
    manifest_path = path / "manifest.json"
    version = manifest.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise UserError(f"{manifest_path}: format_version {version} is not supported by this vosrt "
                        f"(expected {FORMAT_VERSION}); upgrade vosrt or re-export the package")
    family = _require(manifest, "family", str, manifest_path)
    if family not in families.names():
        raise UserError(f"{manifest_path}: unknown family '{family}', expected one of {', '.join(families.names())}")
    row = families.get(family)
    variant = manifest.get("variant", family)

    resolution = _require(manifest, "resolution", dict, manifest_path)
    height = _whole(resolution, "height", manifest_path, "resolution")
    width = _whole(resolution, "width", manifest_path, "resolution")
    stride = _whole(resolution, "stride", manifest_path, "resolution", default=16, minimum=1)
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise UserError(f"{manifest_path}: resolution {height}x{width} is not a positive multiple of {stride}")

    graphs_entry = _require(manifest, "graphs", dict, manifest_path)
    graphs: dict[str, dict[str, Path]] = {}
    for graph in row.graph_names:
        forms = graphs_entry.get(graph)
        if forms is None or forms == {}:
            raise UserError(f"{manifest_path}: family '{family}' needs graph '{graph}', which the manifest lacks")
        if not isinstance(forms, dict):
            raise UserError(f"{manifest_path}: graphs.{graph} should map forms to file names "
                            f'({{"portable": "{graph}.portable.onnx"}}), got {type(forms).__name__}')
        for form, name in forms.items():
            if not isinstance(name, str):
                raise UserError(f"{manifest_path}: graphs.{graph}.{form} should be a file name, got {name!r}")
            inside(path, name, f"{manifest_path}: graphs.{graph}.{form}")
        graphs[graph] = {form: path / name for form, name in forms.items() if (path / name).is_file()}
        if not graphs[graph]:
            listed = ", ".join(str(v) for v in forms.values())
            raise UserError(f"{path}: graph '{graph}' is listed ({listed}) but none of its files exists")

    streaming_entry = manifest.get("streaming") or {}
    if not isinstance(streaming_entry, dict):
        raise UserError(f"{manifest_path}: manifest 'streaming' should be an object of settings, "
                        f"got {type(streaming_entry).__name__}")
    streaming = dict(row.streaming)
    for key, value in streaming_entry.items():
        # A setting of the family table keeps its default's type: whole numbers (0 allowed: top_k,
        # overlap) stay whole, real-valued thresholds (stem-seg's) must be finite numbers.
        default = row.streaming.get(key)
        if isinstance(default, float):
            streaming[key] = _number(streaming_entry, key, manifest_path, "streaming")
        elif key in row.streaming:
            streaming[key] = _whole(streaming_entry, key, manifest_path, "streaming")
        else:
            streaming[key] = value

    engines = _engines(manifest, path, manifest_path)
    source = manifest.get("source") or {}
    if not isinstance(source, dict):
        raise UserError(f"{manifest_path}: manifest 'source' should be an object "
                        f'({{"checkpoint": "checkpoint.pth"}}), got {type(source).__name__}')
    checkpoint = source.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise UserError(f"{manifest_path}: source.checkpoint should be a file name, got {checkpoint!r}")
    if checkpoint and not Path(checkpoint).is_absolute():
        inside(path, checkpoint, f"{manifest_path}: source.checkpoint")
    _input_mean(manifest, manifest_path)
    dims = manifest.get("dims") or {}
    if not isinstance(dims, dict):
        raise UserError(f"{manifest_path}: manifest 'dims' should be an object of widths, got {type(dims).__name__}")
    for key in dims:
        _whole(dims, key, manifest_path, "dims", minimum=1)
    return Package(path=path.resolve(), manifest=manifest, family=family, variant=variant,
                   height=height, width=width, stride=stride, graphs=graphs, streaming=streaming,
                   dims=dict(dims), engines=engines)


def _engines(manifest: dict, path: Path, manifest_path: Path) -> dict:
    """The manifest's ``engines`` entry (``vosrt build``), checked: ``default`` names a precision, each
    precision's ``files`` map graph names to engine files inside the package."""
    engines = manifest.get("engines") or {}
    if not isinstance(engines, dict):
        raise UserError(f"{manifest_path}: manifest 'engines' should be an object, got {type(engines).__name__}")
    rebuild = f"rebuild the engines with `vosrt build {shlex.quote(str(path))}`"
    default = engines.get("default")
    if default is not None and not isinstance(default, str):
        raise UserError(f"{manifest_path}: engines.default should name a precision, got {default!r}; {rebuild}")
    for precision, build in engines.items():
        if precision == "default":
            continue
        if not isinstance(build, dict):
            raise UserError(f"{manifest_path}: engines.{precision} should be an object, got "
                            f"{type(build).__name__}; {rebuild}")
        files = build.get("files", {})
        if not isinstance(files, dict):
            raise UserError(f"{manifest_path}: engines.{precision}.files should map graph names to engine files, "
                            f"got {type(files).__name__}; {rebuild}")
        for graph, name in files.items():
            if not isinstance(name, str):
                raise UserError(f"{manifest_path}: engines.{precision}.files.{graph} should be a file name, "
                                f"got {name!r}; {rebuild}")
            inside(path, name, f"{manifest_path}: engines.{precision}.files.{graph}")
    return dict(engines)


def _whole(entry: dict, key: str, where: Path, section: str, default=None, minimum: int = 0) -> int:
    """``entry[key]`` as an int: a JSON integer (or a float with no fraction) >= ``minimum``; UserError
    naming the setting otherwise (never truncated: 128.7 is an error, not 128)."""
    value = entry.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where}: {section}.{key} should be a whole number >= {minimum}, got {value!r}")
    return value


def _input_mean(manifest: dict, where: Path) -> None:
    """Check the manifest's ``input.mean`` where it has one: three finite numbers in 0..1, the RGB colour that
    sessions pad frames with (a NaN there went into every padded frame and blanked the stream's labels after the
    first; a list of another length was ignored for black)."""
    entry = manifest.get("input")
    if entry is None:
        return
    if not isinstance(entry, dict):
        raise UserError(f"{where}: manifest 'input' should be an object describing the graphs' image input, "
                        f"got {type(entry).__name__}")
    mean = entry.get("mean")
    if mean is None:
        return
    if (not isinstance(mean, list) or len(mean) != 3
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0   # NaN: False
                   for v in mean)):
        raise UserError(f"{where}: input.mean should be the RGB mean of the model's input as three numbers in "
                        f"0..1 (ImageNet's: [0.485, 0.456, 0.406]), got {mean!r}; re-export the package")


def _number(entry: dict, key: str, where: Path, section: str) -> float:
    """``entry[key]`` as a finite float; UserError naming the setting otherwise."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise UserError(f"{where}: {section}.{key} should be a finite number, got {value!r}")
    return float(value)


def _finite(value: int | float) -> bool:
    """Whether ``value`` is a finite number a float holds (a JSON integer of 400 digits made isfinite raise)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def inside(folder: Path, name: str, what: str) -> Path:
    """``folder / name`` resolved, which must stay inside ``folder``: a manifest names files of its own
    package only (no ``..``, no absolute paths, no links out), since some of them are loaded as code."""
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if not target.is_relative_to(root):
        raise UserError(f"{what}: '{name}' lies outside the package folder {root}; a manifest may only name "
                        "files inside its package")
    return target


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file: how a package records its checkpoint, engines and plugin library."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
