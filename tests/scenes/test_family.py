import copy
import subprocess
import sys

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frobnolab.cli import main
from frobnolab.scenes import FamilyError, load_family, shipped_families

VALID = {
    "name": "t",
    "camera": {"yfov": 40, "pose": {"type": "orbit", "radius": 3, "azimuth": {"uniform": [0, 90]}}},
    "lights": [{"type": "directional", "intensity": 1.0}, {"type": "spot", "position": [1, 3, 1]}],
    "floor": {"extent": 3, "material": {"texture": {"type": "checker", "scale": 2}}},
    "objects": [{"shape": {"choice": ["sphere", "box"]}, "size": {"normal": [0.5, 0.1]}, "count": {"randint": [1, 3]},
                 "material": {"color": {"hsv": [{"uniform": [0, 360]}, 0.5, 0.8]}}}],
}


def write(tmp_path, data, name="fam.yaml"):
    p = tmp_path / name
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_shipped_families_load_and_sample():
    assert set(shipped_families()) >= {"shapes", "clutter", "textures", "single"}
    for name in shipped_families():
        fam = load_family(name)
        scene = fam.sample(0, seed=0, size=16)
        assert scene.camera.width == 16 and len(scene.objects) >= 1


def test_same_seed_same_scene_different_seed_different_scene():
    fam = load_family("clutter")
    a, b, c = fam.sample(5, seed=1), fam.sample(5, seed=1), fam.sample(5, seed=2)
    assert a.factors == b.factors
    assert a.factors != c.factors
    assert 2 <= a.factors["object_count"] <= 5


def test_single_family_varies_only_the_camera():
    fam = load_family("single")
    f0, f1 = fam.sample(0).factors, fam.sample(1).factors
    assert {k for k in f0 if not k.startswith("object")} == {"camera.pose.azimuth", "camera.pose.elevation"}
    assert f0 != f1


def test_toml_families_load(tmp_path):
    p = tmp_path / "f.toml"
    p.write_text('name = "t"\n[[objects]]\nshape = "torus"\nminor = 0.2\n')
    assert load_family(p).sample(0, size=16).objects[0].shape.minor == 0.2


def test_distributions_respect_bounds(tmp_path):
    fam = load_family(write(tmp_path, {"name": "t", "objects": [{"shape": "sphere", "size": {"normal": [0.01, 5]}}]}))
    sizes = [fam.sample(i).objects[0].scale for i in range(200)]
    assert min(sizes) > 0  # clipped to the field's bounds (> 0)


def _with(path, value):
    d = copy.deepcopy(VALID)
    node = d
    for k in path[:-1]:
        node = node[k]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


BAD = [
    (_with(["objects", 0, "size"], -1), "objects[0].size", "must be >"),
    (_with(["objects", 0, "size"], 0), "objects[0].size", "must be >"),
    (_with(["objects", 0, "size"], "big"), "objects[0].size", "expected a number"),
    (_with(["objects", 0, "shape"], "dodecahedron"), "objects[0].shape", "expected one of"),
    (_with(["objects", 0, "shape"], KeyError), "objects[0].shape", "required"),
    (_with(["objects", 0, "colour"], [1, 0, 0]), "objects[0].colour", "unknown field"),
    (_with(["objects", 0, "count"], {"randint": [3, 1]}), "objects[0].count.randint", "above high"),
    (_with(["objects", 0, "count"], 2.5), "objects[0].count", "whole number"),
    (_with(["objects", 0, "size"], {"uniform": [1]}), "objects[0].size.uniform", "list [a, b]"),
    (_with(["objects", 0, "size"], {"normal": [0.5, -1]}), "objects[0].size.normal[1]", "must be >"),
    (_with(["objects", 0, "material", "color"], [1, 0]), "objects[0].material.color", "list of 3"),
    (_with(["objects", 0, "material", "roughness"], 2), "objects[0].material.roughness", "<= 1"),
    (_with(["lights", 0, "type"], "laser"), "lights[0].type", "expected one of"),
    (_with(["lights", 1, "position"], KeyError), "lights[1].position", "required"),
    (_with(["camera", "yfov"], 0), "camera.yfov", ">= 1"),
    (_with(["camera", "pose", "radius"], float("nan")), "camera.pose.radius", "finite"),
    (_with(["floor", "material", "texture", "scale"], -2), "floor.material.texture.scale", "must be >"),
    (_with(["size"], 0), "size", ">= 8"),
    (_with(["size"], {"uniform": [16, 32]}), "size", "constant"),
    (_with(["objects"], {"shape": "sphere"}), "objects", "expected a list"),
    (_with(["objects", 0, "shape"], "mesh"), "objects[0].mesh", "required when shape is 'mesh'"),
    (_with(["objects", 0], {"shape": "mesh", "mesh": "missing.obj"}), "objects[0].mesh", "not found"),
    (_with(["objects", 0, "material", "texture"], {"type": "image", "path": "nope.png"}),
     "objects[0].material.texture.path", "unreadable"),
    (_with(["name"], KeyError), "name", "required"),
    ("name: [unclosed", "<top>", "not valid YAML"),
    ("- just\n- a list\n", "<top>", "expected a mapping"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "<top>", "not a text file"),  # a PNG as x.yaml
    ("name: t\n".encode() + "caf\u00e9".encode("latin-1"), "<top>", "byte 0xe9 at offset 11 is not UTF-8"),
]


@pytest.mark.parametrize("data,path,reason", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_family_files_name_file_field_and_reason(tmp_path, data, path, reason):
    p = write(tmp_path, data)
    with pytest.raises(FamilyError) as e:
        load_family(p)
    assert e.value.path == path
    assert reason in e.value.reason
    assert str(p) in str(e.value)


def test_binary_family_file_is_one_line_naming_it(tmp_path):
    p = write(tmp_path, b"\x89PNG\r\n\x1a\n" + bytes(64), name="x.toml")
    with pytest.raises(FamilyError) as e:
        load_family(p)
    assert str(p) in str(e.value) and "0x89" in str(e.value) and len(str(e.value).splitlines()) == 1


def test_unknown_family_name_lists_the_shipped_ones():
    from frobnolab.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="no such family") as e:
        load_family("no-such-family")
    assert isinstance(e.value, FamilyError) and all(name in str(e.value) for name in shipped_families())


def test_unreadable_texture_file_is_reported(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    data = _with(["objects", 0, "material", "texture"], {"type": "image", "path": "broken.png"})
    with pytest.raises(FamilyError, match="unreadable texture"):
        load_family(write(tmp_path, data))


def test_cli_bad_family_exits_2_and_writes_nothing(tmp_path, capsys):
    p = write(tmp_path, _with(["objects", 0, "size"], -1))
    out = tmp_path / "ds"
    assert main(["render", str(p), "--n", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "objects[0].size" in err and str(p) in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "ds.partial").exists()
    assert main(["render", "shapes", "--n", "2", "--size", "0", "--out", str(out)]) == 2
    assert "size" in capsys.readouterr().err and not out.exists()


def test_cli_families_lists_and_describes(capsys):
    assert main(["families"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("shapes", "clutter", "textures", "single"))
    assert main(["families", "describe", "single"]) == 0
    assert "camera" in capsys.readouterr().out


def test_cli_help_documents_every_render_option():
    out = subprocess.run([sys.executable, "-m", "frobnolab.cli", "render", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for opt in ("--n", "--size", "--seed", "--out", "--workers", "--shard-size", "--force"):
        assert opt in out.stdout


# -------------------------------------------------------------------------------------------- property-based fuzzing

_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=5), st.lists(st.integers(-2, 2), max_size=4),
                  st.dictionaries(st.sampled_from(["uniform", "normal", "choice", "randint", "type", "x"]),
                                  st.lists(st.floats(-2, 2), max_size=3), max_size=2))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(VALID) if p]


@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ALL_PATHS), value=_leaf, delete=st.booleans())
def test_fuzzed_family_files_load_or_fail_cleanly(tmp_path, path, value, delete):
    data = _with(list(path), KeyError if delete else value)
    p = write(tmp_path, data)
    try:
        fam = load_family(p)
    except FamilyError as e:
        assert str(p) in str(e) and e.path and e.reason
        return
    scene = fam.sample(0, size=8)  # what validates must also build
    assert np.isfinite(scene.camera.pose).all()


def test_mesh_files_and_image_textures_render_with_exact_queries(tmp_path):
    import trimesh
    from PIL import Image

    from frobnolab.scenes.queries import SceneQuery
    from frobnolab.scenes.render import Renderer

    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "blob.obj")
    Image.fromarray((np.random.default_rng(0).random((8, 16, 3)) * 255).astype(np.uint8)).save(tmp_path / "t.png")
    fam = load_family(write(tmp_path, {
        "name": "m", "camera": {"pose": {"type": "orbit", "radius": 3}}, "lights": [{"type": "directional"}],
        "floor": {"extent": 2},
        "objects": [{"shape": "mesh", "mesh": "blob.obj", "size": 0.5, "x": -0.6},
                    {"shape": "sphere", "size": 0.4, "x": 0.6, "material": {"texture": {"type": "image", "path": "t.png"}}}],
    }))
    scene = fam.sample(0, size=32)
    with Renderer(32) as r:
        b = r.render(scene)
    assert set(np.unique(b["instance"])) >= {1, 2, 3}
    assert (b["material"][b["instance"] == 3] == 5).all()  # the image texture
    q = SceneQuery(scene)
    pos = b["position"][b["instance"] == 2]
    assert np.abs(q.sdf(pos)).max() < 2e-3  # trimesh's exact distance to the mesh, negative inside
    assert q.occupancy(np.array([scene.objects[1].translation]))[0]
