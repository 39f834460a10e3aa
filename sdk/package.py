"""Model packages: read and validate ``manifest.json`` (layout in docs/DESIGN.md, "Package folder")."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from vosrt.sdk.errors import UserError

FORMAT_VERSION = 1
FAMILY_GRAPHS = {
    "stcn": ("encode_key", "encode_value", "segment"),
    "3dc-seg": ("segment_clip",),
}
FORMS = ("portable", "plugin")
STREAMING_DEFAULTS = {
    "stcn": {"mem_every": 5, "top_k": 20, "memory_capacity": 20},
    "3dc-seg": {"clip_length": 8, "overlap": 3},
}


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

    @property
    def forms(self) -> list[str]:
        """Forms every graph of the family is available in (``portable`` first)."""
        return [f for f in FORMS if all(f in self.graphs[g] for g in FAMILY_GRAPHS[self.family])]

    def graph_path(self, graph: str, form: str) -> Path:
        """Path of ``graph`` in ``form``; UserError when the package lacks it."""
        if graph not in self.graphs or form not in self.graphs[graph]:
            raise UserError(f"package {self.path}: no '{form}' form of graph '{graph}' "
                            f"(available forms: {', '.join(self.forms) or 'none'})")
        return self.graphs[graph][form]

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
    path = Path(path)
    if not path.exists():
        raise UserError(f"model package not found: {path}")
    if path.is_file() and path.name == "manifest.json":
        path = path.parent
    if not path.is_dir():
        raise UserError(f"model package should be a folder holding manifest.json, got the file {path}")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{path} is not a model package: it has no manifest.json (create one with `vosrt export`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{manifest_path} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")

    version = manifest.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise UserError(f"{manifest_path}: format_version {version} is not supported by this vosrt "
                        f"(expected {FORMAT_VERSION}); upgrade vosrt or re-export the package")
    family = _require(manifest, "family", str, manifest_path)
    if family not in FAMILY_GRAPHS:
        raise UserError(f"{manifest_path}: unknown family '{family}', expected one of {', '.join(FAMILY_GRAPHS)}")
    variant = manifest.get("variant", family)

    resolution = _require(manifest, "resolution", dict, manifest_path)
    try:
        height, width = int(resolution["height"]), int(resolution["width"])
        stride = int(resolution.get("stride", 16))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{manifest_path}: 'resolution' needs integer 'height' and 'width', got {resolution}") from None
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise UserError(f"{manifest_path}: resolution {height}x{width} is not a positive multiple of {stride}")

    graphs_entry = _require(manifest, "graphs", dict, manifest_path)
    graphs: dict[str, dict[str, Path]] = {}
    for graph in FAMILY_GRAPHS[family]:
        forms = graphs_entry.get(graph)
        if not isinstance(forms, dict) or not forms:
            raise UserError(f"{manifest_path}: family '{family}' needs graph '{graph}', which the manifest lacks")
        graphs[graph] = {form: path / name for form, name in forms.items()
                         if isinstance(name, str) and (path / name).is_file()}
        if not graphs[graph]:
            listed = ", ".join(str(v) for v in forms.values())
            raise UserError(f"{path}: graph '{graph}' is listed ({listed}) but none of its files exists")

    streaming = dict(STREAMING_DEFAULTS[family])
    streaming.update(manifest.get("streaming") or {})
    return Package(path=path.resolve(), manifest=manifest, family=family, variant=variant,
                   height=height, width=width, stride=stride, graphs=graphs, streaming=streaming,
                   dims=dict(manifest.get("dims") or {}), engines=dict(manifest.get("engines") or {}))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file: how a package records its checkpoint, engines and plugin library."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
