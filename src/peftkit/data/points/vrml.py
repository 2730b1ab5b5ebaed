"""A small VRML 2.0 (VRML97) reader for the triangle meshes of the KiCad 3D library.

It parses the node tree (``Shape``, ``Appearance``/``Material``, ``IndexedFaceSet``/``Coordinate``, the
grouping nodes ``Group``/``Transform``/``Switch``/``Anchor``/``Collision``/``Billboard``) with ``DEF``/``USE``
on any node, applies ``Transform`` (``P' = T C R SR S SR^-1 C^-1 P``, ISO/IEC 14772-1 6.52), triangulates
polygons as fans and keeps, for every triangle, the name of its material (the ``DEF`` name, e.g.
``PIN-01``, ``IC-BODY-EPOXY-04``): part labels for segmentation. Line and point sets carry no surface and
are skipped; unknown nodes are parsed and ignored. Numeric arrays are parsed with numpy, so large files
read quickly.

Shapes: v vertices, f triangles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peftkit.core.errors import DataError


class VrmlError(DataError):
    """A VRML file is empty, malformed, or holds no surface."""


@dataclass
class Mesh:
    """A triangle mesh with one material per triangle.

    Attributes:
        vertices: ``[v, 3]`` float64.
        faces: ``[f, 3]`` int64 indices into ``vertices``.
        face_material: ``[f]`` int64 indices into ``materials``.
        materials: material names (``""`` for a shape without a named material).
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_material: np.ndarray
    materials: list[str]


@dataclass(eq=False)
class _Node:
    type: str
    fields: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # the DEF name, if any


_TOKEN = re.compile(r'[\s,]*([{}\[\]]|"(?:[^"\\]|\\.)*"|[^\s,{}\[\]"]+)')
_COMMENT = re.compile(r"#[^\n]*")
_NUMERIC_MF = {"point", "coordIndex", "vector", "normalIndex", "colorIndex", "texCoordIndex", "color"}
_GROUPS = {"Group", "Transform", "Anchor", "Collision", "Billboard", "Switch", "LOD"}
MAX_DEPTH = 64  # nesting limit of the node tree (KiCad files nest 2-4 levels); deeper files are refused


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = _COMMENT.sub("", text)
        self.i = 0
        self.defs: dict[str, _Node] = {}
        self.depth = 0  # nodes open around the parse position (bounded: the parser recurses per level)

    def peek(self) -> str | None:
        m = _TOKEN.match(self.s, self.i)
        return m.group(1) if m else None

    def next(self) -> str:
        m = _TOKEN.match(self.s, self.i)
        if not m:
            raise VrmlError("unexpected end of file")
        self.i = m.end()
        return m.group(1)

    def expect(self, tok: str) -> None:
        got = self.next()
        if got != tok:
            raise VrmlError(f"expected '{tok}' but found '{got[:40]}'")

    def nodes(self) -> list[_Node]:
        out = []
        while self.peek() is not None:
            if self.peek() in ("ROUTE",):
                for _ in range(4):  # ROUTE a.b TO c.d
                    self.next()
                continue
            node = self.node()
            if node is not None:
                out.append(node)
        return out

    def node(self) -> _Node | None:
        tok = self.next()
        if tok == "DEF":
            name = self.next()
            node = self.node()
            if node is not None:
                node.name = name
                self.defs[name] = node
            return node
        if tok == "USE":
            name = self.next()
            if name not in self.defs:
                raise VrmlError(f"USE of undefined node '{name}'")
            return self.defs[name]
        if tok == "NULL":
            return None
        if tok in ("PROTO", "EXTERNPROTO"):
            raise VrmlError(f"{tok} is not supported")
        node = _Node(tok)
        self.expect("{")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise VrmlError(f"nodes nested deeper than {MAX_DEPTH} levels; such a file is not supported")
        while (p := self.peek()) != "}":
            if p is None:
                raise VrmlError(f"unterminated {tok} node")
            name = self.next()
            node.fields[name] = self.value(name)
        self.next()
        self.depth -= 1
        return node

    def _is_node_start(self) -> bool:
        p = self.peek()
        if p in ("DEF", "USE", "NULL"):
            return True
        if p is None or p in "{}[]" or not p[0].isalpha() or p in ("TRUE", "FALSE"):
            return False
        m = _TOKEN.match(self.s, self.i)
        m2 = _TOKEN.match(self.s, m.end()) if m else None
        return bool(m2 and m2.group(1) == "{")

    def numbers(self) -> np.ndarray:
        """A numeric MF field: ``[ ... ]`` parsed at once, or a single value."""
        if self.peek() != "[":
            tok = self.next()
            if not _is_scalar(tok):
                raise VrmlError(f"expected a number but found '{tok[:40]}'")
            return np.array([float(tok)])
        self.next()
        end = self.s.find("]", self.i)
        if end < 0:
            raise VrmlError("unterminated numeric array")
        body = self.s[self.i : end]
        self.i = end + 1
        try:
            return np.array(body.replace(",", " ").split(), dtype=np.float64)
        except ValueError as e:
            raise VrmlError(f"bad number in array: {e}") from None

    def value(self, name: str) -> Any:
        if self._is_node_start():  # first: "color" is both a node field and Color's MF numbers
            return self.node()
        if name in _NUMERIC_MF:
            return self.numbers()
        if self.peek() == "[":
            self.next()
            items: list[Any] = []
            while (p := self.peek()) != "]":
                if p is None:
                    raise VrmlError(f"unterminated list in field '{name}'")
                items.append(self.node() if self._is_node_start() else self.next())
            self.next()
            return items
        vals = []
        while (p := self.peek()) is not None and p not in "{}[]" and (_is_scalar(p)):
            vals.append(self.next())
        return vals


def _is_scalar(tok: str) -> bool:
    if tok in ("TRUE", "FALSE") or tok.startswith('"'):
        return True
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _floats(node: _Node, name: str, default: list[float]) -> np.ndarray:
    """Field ``name`` as ``len(default)`` finite floats (the default when absent); VrmlError otherwise."""
    v = node.fields.get(name)
    if not v:
        return np.array(default, dtype=np.float64)
    try:
        out = np.array([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        raise VrmlError(f"bad {node.type}.{name}: {str(v)[:60]}") from None
    if out.shape != (len(default),) or not np.isfinite(out).all():
        raise VrmlError(f"bad {node.type}.{name}: expected {len(default)} finite numbers, got {str(v)[:60]}")
    return out


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    axis, angle = axis_angle[:3], float(axis_angle[3])
    norm = np.linalg.norm(axis)
    if norm == 0.0 or angle == 0.0:
        return np.eye(4)
    x, y, z = axis / norm
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)  # Rodrigues
    return m


def _translate(t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


def transform_matrix(node: _Node) -> np.ndarray:
    """4x4 matrix of a VRML ``Transform``: ``T C R SR S SR^-1 C^-1``."""
    t = _floats(node, "translation", [0, 0, 0])
    c = _floats(node, "center", [0, 0, 0])
    r = _rotation(_floats(node, "rotation", [0, 0, 1, 0]))
    sr = _rotation(_floats(node, "scaleOrientation", [0, 0, 1, 0]))
    s = np.diag([*_floats(node, "scale", [1, 1, 1]), 1.0])
    return _translate(t) @ _translate(c) @ r @ sr @ s @ sr.T @ _translate(-c)


def triangulate(index: np.ndarray) -> np.ndarray:
    """``coordIndex`` (polygons ended by -1) -> ``[f, 3]`` triangles by fans; degenerate polygons dropped."""
    idx = index.astype(np.int64)
    if idx.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if idx[-1] != -1:
        idx = np.append(idx, -1)
    ends = np.flatnonzero(idx == -1)  # [p]
    starts = np.concatenate([[0], ends[:-1] + 1])  # [p]
    n_tri = np.maximum(ends - starts - 2, 0)  # triangles per polygon
    if n_tri.sum() == 0:
        return np.zeros((0, 3), dtype=np.int64)
    poly = np.repeat(np.arange(len(starts)), n_tri)  # [f]
    j = np.arange(n_tri.sum()) - np.repeat(np.cumsum(n_tri) - n_tri, n_tri)  # fan position [f]
    s = starts[poly]
    return np.stack([idx[s], idx[s + j + 1], idx[s + j + 2]], axis=1)


class _Collector:
    def __init__(self) -> None:
        self.verts: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.mats: list[np.ndarray] = []
        self.names: dict[str, int] = {}
        self.offset = 0

    def shape(self, node: _Node, m: np.ndarray) -> None:
        geom = node.fields.get("geometry")
        if not isinstance(geom, _Node) or geom.type != "IndexedFaceSet":
            return  # line sets, point sets, primitives without a mesh: no sampled surface
        coord = geom.fields.get("coord")
        pts = coord.fields.get("point") if isinstance(coord, _Node) else None
        index = geom.fields.get("coordIndex")
        if pts is None or index is None or pts.size == 0:
            return
        if pts.size % 3:
            raise VrmlError(f"Coordinate.point has {pts.size} numbers, not a multiple of 3")
        v = pts.reshape(-1, 3)  # [v, 3]
        tri = triangulate(index)  # [f, 3]
        if tri.size and (tri.min() < 0 or tri.max() >= len(v)):
            raise VrmlError(f"coordIndex refers to vertex {int(tri.max())} but there are {len(v)}")
        v = v @ m[:3, :3].T + m[:3, 3]
        app = node.fields.get("appearance")
        mat = app.fields.get("material") if isinstance(app, _Node) else None
        mname = mat.name if isinstance(mat, _Node) else ""
        mid = self.names.setdefault(mname, len(self.names))
        self.verts.append(v)
        self.faces.append(tri + self.offset)
        self.mats.append(np.full(len(tri), mid, dtype=np.int64))
        self.offset += len(v)

    def walk(self, node: Any, m: np.ndarray, depth: int = 0) -> None:
        if depth > 2 * MAX_DEPTH + 2:  # a node and its children list per level
            raise VrmlError(f"node tree deeper than {MAX_DEPTH} levels (a USE cycle?)")
        if isinstance(node, list):
            for child in node:
                self.walk(child, m, depth + 1)
            return
        if not isinstance(node, _Node):
            return
        if node.type == "Shape":
            self.shape(node, m)
        elif node.type == "Transform":
            self.walk(node.fields.get("children"), m @ transform_matrix(node), depth + 1)
        elif node.type == "Switch":
            choice = node.fields.get("choice") or []
            which = int(_floats(node, "whichChoice", [-1])[0])
            if isinstance(choice, _Node):
                choice = [choice]
            if 0 <= which < len(choice):
                self.walk(choice[which], m, depth + 1)
        elif node.type == "LOD":
            level = node.fields.get("level") or []
            self.walk(level[:1] if isinstance(level, list) else level, m, depth + 1)
        elif node.type in _GROUPS:
            self.walk(node.fields.get("children"), m, depth + 1)


def parse_vrml(text: str) -> Mesh:
    """Parse VRML 2.0 text into a :class:`Mesh` (all ``IndexedFaceSet`` shapes, transforms applied).

    Raises:
        VrmlError: on a syntax error, a bad index, or when the file holds no triangle.
    """
    if not text.lstrip().startswith("#VRML V2.0"):
        raise VrmlError("not a VRML 2.0 file (missing '#VRML V2.0' header)")
    col = _Collector()
    col.walk(_Parser(text).nodes(), np.eye(4))
    if not col.faces or sum(len(f) for f in col.faces) == 0:
        raise VrmlError("the file holds no triangle (no IndexedFaceSet with faces)")
    return Mesh(
        vertices=np.concatenate(col.verts),
        faces=np.concatenate(col.faces),
        face_material=np.concatenate(col.mats),
        materials=list(col.names),
    )


def read_vrml(path: str | Path) -> Mesh:
    """Read a ``.wrl`` file; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise VrmlError(f"cannot read {p}: {e.strerror}") from None
    try:
        return parse_vrml(text)
    except VrmlError as e:
        raise VrmlError(f"{p.name}: {e}") from None
