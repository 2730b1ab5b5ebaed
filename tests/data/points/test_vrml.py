# ruff: noqa: E501  (the VRML samples below keep the long lines of real exported files)
"""The VRML 2.0 reader on files in the styles the KiCad library uses (written here), and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from peftkit.data.points.vrml import VrmlError, parse_vrml, read_vrml, triangulate

# The kicad StepUp style: materials defined in empty Shapes, then used by the geometry Shapes.
STEPUP = """#VRML V2.0 utf8
#kicad StepUp wrl exported
# a comment { with [ brackets
Shape {
    appearance Appearance {material DEF PIN-01 Material {
        ambientIntensity 0.27
        diffuseColor 0.82 0.82 0.78
        transparency 0.0
        }
    }
}
Shape {
    appearance Appearance {material DEF IC-BODY-EPOXY-04 Material { diffuseColor 0.1 0.1 0.1 } }
}
Shape { geometry IndexedFaceSet
{ creaseAngle 0.50 coordIndex [0,1,2,-1,0,2,3,-1]
coord Coordinate { point [0 0 0,1 0 0,1 1 0,0 1 0]
}}
appearance Appearance{material USE PIN-01 }
}
Shape { geometry IndexedFaceSet
{ coordIndex [0,1,2,3,-1]
coord Coordinate { point [0 0 1,2 0 1,2 2 1,0 2 1] }}
appearance Appearance{material USE IC-BODY-EPOXY-04 }
}
"""

# The FreeCAD/other exporter style: nested Groups, a Transform, a Switch, DEF/USE of geometry, a line set.
NESTED = """#VRML V2.0 utf8
Group { children [
  Transform {
    translation 10 0 0
    rotation 0 0 1 1.5707963267948966
    scale 2 2 2
    children [
      Switch { whichChoice 1 choice [
        Shape { geometry IndexedFaceSet { coord Coordinate { point [ 5 5 5, 6 5 5, 5 6 5 ] } coordIndex [ 0 1 2 -1 ] } }
        DEF tri Shape {
          appearance Appearance { material DEF red Material { diffuseColor 1 0 0 } }
          geometry IndexedFaceSet { coord DEF c1 Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0, 1, 2, -1 ] }
        }
      ] }
    ]
  }
  USE tri
  Shape { geometry IndexedFaceSet { coord USE c1 coordIndex [ 0 2 1 ] color Color { color [ 1 0 0 ] } } }
  Shape { geometry IndexedLineSet { coord Coordinate { point [ 0 0 0, 9 9 9 ] } coordIndex [ 0 1 -1 ] } }
] }
"""


def test_stepup_style_materials_and_triangulation() -> None:
    mesh = parse_vrml(STEPUP)
    assert mesh.materials == ["PIN-01", "IC-BODY-EPOXY-04"]
    assert mesh.faces.shape == (4, 3) and mesh.vertices.shape == (8, 3)
    assert mesh.face_material.tolist() == [0, 0, 1, 1]
    assert mesh.faces[2:].tolist() == [[4, 5, 6], [4, 6, 7]]  # the quad, as a fan, offset by 4 vertices


def test_nested_groups_transform_switch_def_use() -> None:
    mesh = parse_vrml(NESTED)
    assert len(mesh.faces) == 3  # switch choice 1, USE tri, coord USE; no line set
    first = mesh.vertices[mesh.faces[0]]
    # T R S on (0,0,0),(1,0,0),(0,1,0): scale 2, rotate 90 deg about z, translate (10,0,0)
    assert np.allclose(first, [[10, 0, 0], [10, 2, 0], [8, 0, 0]], atol=1e-9)
    second = mesh.vertices[mesh.faces[1]]
    assert np.allclose(second, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    assert mesh.materials[mesh.face_material[0]] == "red" and mesh.face_material[0] == mesh.face_material[1]
    assert mesh.materials[mesh.face_material[2]] == ""


def test_transform_center_and_scale_orientation() -> None:
    text = """#VRML V2.0 utf8
Transform { center 1 0 0 rotation 0 0 1 3.141592653589793 children [
  Shape { geometry IndexedFaceSet { coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0 1 2 ] } } ] }
"""
    v = parse_vrml(text).vertices
    assert np.allclose(v, [[2, 0, 0], [1, 0, 0], [2, -1, 0]], atol=1e-9)  # rotation about (1,0,0)


def test_triangulate_fans_and_degenerates() -> None:
    tri = triangulate(np.array([0, 1, 2, 3, 4, -1, 5, 6, -1, 7, 8, 9]))
    assert tri.tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 4], [7, 8, 9]]


@pytest.mark.parametrize(
    "text,msg",
    [
        ("", "not a VRML 2.0"),
        ("#VRML V1.0 ascii\nSeparator {}", "not a VRML 2.0"),
        (
            "#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [0 0 0",
            "unterminated",
        ),
        (
            "#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [0 0 0, 1 0 0, 0 1 0] } "
            "coordIndex [0 1 5 -1] } }",
            "refers to vertex",
        ),
        ("#VRML V2.0 utf8\nShape { appearance Appearance { material USE nothing } }", "undefined"),
        ("#VRML V2.0 utf8\nGroup { children [] }", "no triangle"),
        (
            "#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [0 0 x] } coordIndex [0] } }",
            "bad number",
        ),
        (
            "#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [0 0 0 1] } coordIndex [0] } }",
            "multiple of 3",
        ),
    ],
)
def test_malformed_files_raise_clear_errors(text: str, msg: str) -> None:
    with pytest.raises(VrmlError, match=msg):
        parse_vrml(text)


def test_read_vrml_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.wrl"
    f.write_text("#VRML V2.0 utf8\nGroup {")
    with pytest.raises(VrmlError, match="broken.wrl"):
        read_vrml(f)
    with pytest.raises(VrmlError, match="cannot read"):
        read_vrml(tmp_path / "missing.wrl")
    (tmp_path / "ok.wrl").write_text(STEPUP)
    assert len(read_vrml(tmp_path / "ok.wrl").faces) == 4


def test_deep_nesting_is_one_clear_error_not_a_recursion_error() -> None:
    text = "#VRML V2.0 utf8\n" + "Group { children [ " * 3000 + "] }" * 3000
    with pytest.raises(VrmlError, match="nested deeper than"):
        parse_vrml(text)


@pytest.mark.parametrize(
    "field", ["rotation 0 1", "rotation 0 0 1 nan", "scale 1 1", "translation 1 2", "whichChoice 1 2"]
)
def test_bad_transform_fields_raise_vrml_error(field: str) -> None:
    node = "Switch" if "whichChoice" in field else "Transform"
    kids = "choice" if node == "Switch" else "children"
    text = (
        f"#VRML V2.0 utf8\n{node} {{ {field} {kids} [ Shape {{ geometry IndexedFaceSet {{ "
        "coord Coordinate { point [0 0 0, 1 0 0, 0 1 0] } coordIndex [0 1 2 -1] } } ] }"
    )
    with pytest.raises(VrmlError, match="bad "):
        parse_vrml(text)
