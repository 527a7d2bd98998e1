"""Scene families: files (YAML or TOML) that describe a distribution of scenes, and sampling scenes from them.

A family is validated once when loaded (:func:`load_family`); :meth:`Family.sample` then builds scene ``index`` of a
dataset with seed ``seed``. Each scene draws from its own generator, seeded by ``(seed, index)``, so a scene does not
depend on how a render is split into shards or on which scenes were rendered before it.

See ``scenes/families/*.yaml`` for the shipped families and ``frobnolab families describe NAME`` for their text.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from frobnolab.errors import unknown

from . import schema as S
from .primitives import ANALYTIC_SHAPES, MeshShape, Primitive
from .scene import Camera, Light, Material, Scene, SceneObject, look_at, srgb_to_linear
from .textures import Texture

FAMILY_DIR = Path(__file__).parent / "families"
WORLD = 1000.0  # bound on coordinates and extents, world units (the camera sees 100 units at most)


def _texture_schema(base: Path):
    def readable_image(path, p):
        f = (base / path).resolve()
        try:
            from PIL import Image

            with Image.open(f) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001 - any failure to decode means unreadable
            S.fail(p, f"unreadable texture image {str(f)!r}: {type(e).__name__}: {e}")

    pattern = {"scale": (S.number(0, open_lo=True), 2.0), "color2": (S.color(), [1.0, 1.0, 1.0])}
    return S.tagged("type", {
        "plain": S.record({}),
        "checker": S.record(pattern),
        "stripes": S.record(pattern),
        "noise": S.record(pattern),
        "image": S.record({"path": (S.string(readable_image), S.REQUIRED)}),
    })


def _schema(base: Path):
    def existing_mesh(path, p):
        if not (base / path).is_file():
            S.fail(p, f"mesh file not found: {str((base / path).resolve())!r}")

    material = S.record({
        "color": (S.color(), [0.7, 0.7, 0.7]),
        "roughness": (S.number(0.0, 1.0), 0.5),
        "metallic": (S.number(0.0, 1.0), 0.0),
        "texture": (_texture_schema(base), {"type": "plain"}),
    })
    angle = S.number(-360.0, 360.0)
    coord = S.number(-WORLD, WORLD)
    obj = S.record({
        "name": (S.string(), None),
        "shape": (S.enum(*ANALYTIC_SHAPES, "mesh"), S.REQUIRED),
        "mesh": (S.string(existing_mesh), None),
        "count": (S.number(0, 64, integer=True), 1),
        "size": (S.number(0.0, 100.0, open_lo=True), 0.5),
        "aspect": (S.number(0.0, 100.0, open_lo=True), 1.0),
        "minor": (S.number(0.0, 1.0, open_lo=True), 0.35),
        "x": (coord, 0.0),
        "z": (coord, 0.0),
        "elevation": (S.number(0.0, WORLD), 0.0),
        "yaw": (angle, 0.0), "pitch": (angle, 0.0), "roll": (angle, 0.0),
        "material": (material, {}),
    })
    vec3 = S.vector(3, coord)
    intensity = S.number(0.0, 1e6)
    light = S.tagged("type", {
        "directional": S.record({"azimuth": (angle, 45.0), "elevation": (S.number(-90.0, 90.0), 45.0),
                                 "intensity": (intensity, 3.0), "color": (S.color(), [1.0, 1.0, 1.0])}),
        "point": S.record({"position": (vec3, S.REQUIRED), "intensity": (intensity, 20.0),
                           "color": (S.color(), [1.0, 1.0, 1.0])}),
        "spot": S.record({"position": (vec3, S.REQUIRED), "target": (vec3, [0.0, 0.0, 0.0]),
                          "intensity": (intensity, 20.0), "color": (S.color(), [1.0, 1.0, 1.0]),
                          "inner_angle": (S.number(0.0, 90.0), 15.0),
                          "outer_angle": (S.number(0.0, 90.0, open_lo=True), 30.0)}),
    })
    camera = S.record({
        "yfov": (S.number(1.0, 170.0), 45.0),
        "pose": (S.tagged("type", {
            "orbit": S.record({"target": (vec3, [0.0, 0.0, 0.0]), "radius": (S.number(1e-3, 50.0), 4.0),
                               "azimuth": (angle, 0.0), "elevation": (S.number(-89.0, 89.0), 30.0)}),
            "look_at": S.record({"eye": (vec3, S.REQUIRED), "target": (vec3, [0.0, 0.0, 0.0])}),
        }), {"type": "orbit"}),
    })
    floor = S.record({"extent": (S.number(0.0, WORLD, open_lo=True), 5.0), "material": (material, {})})
    return S.record({
        "name": (S.string(), S.REQUIRED),
        "description": (S.string(), None),
        "size": (S.number(8, 4096, integer=True, dist=False), 64),
        "camera": (camera, {}),
        "background": (S.color(), [0.0, 0.0, 0.0]),
        "ambient": (S.record({"intensity": (intensity, 0.1), "color": (S.color(), [1.0, 1.0, 1.0])}), {}),
        "lights": (S.list_of(light), []),
        "floor": (S.optional(floor), None),
        "objects": (S.list_of(obj), []),
        "avoid_overlap": (S.enum("yes", "no", dist=False), "yes"),
        "shadows": (S.enum("yes", "no", dist=False), "yes"),
        "counterfactuals": (_sweeps, None),
    })


SHADOWS = "shadows"  # the factor that switches cast shadows (1: cast, as the family says by default; 0: none)


def check_sweep(raw) -> dict:
    """A counterfactual sweep ``{factor: NAME, values: [...]}`` or ``{factor: NAME, deltas: [...]}`` as a plain dict
    ``{"factor", "values", "deltas"}`` (the one not given None); raises ValueError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"a sweep is {{factor: NAME, values: [...]}} or {{factor: NAME, deltas: [...]}}, got {raw!r}")
    extra = sorted(set(raw) - {"factor", "values", "deltas"})
    if extra:
        raise ValueError(f"unknown sweep keys {extra} (known: factor, values, deltas)")
    if not isinstance(raw.get("factor"), str) or not raw["factor"]:
        raise ValueError(f"a sweep's factor must be a field path (e.g. object0.size), got {raw.get('factor')!r}")
    given = [k for k in ("values", "deltas") if raw.get(k) is not None]
    if len(given) != 1:
        raise ValueError(f"sweep of {raw['factor']}: give exactly one of values or deltas, got {given or 'neither'}")
    nums = raw[given[0]]
    if not isinstance(nums, (list, tuple)) or not nums or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in nums):
        raise ValueError(f"sweep of {raw['factor']}: {given[0]} must be a non-empty list of finite numbers, "
                         f"got {nums!r}")
    out = {"factor": raw["factor"], "values": None, "deltas": None}
    out[given[0]] = [float(v) for v in nums]
    return out


def sweep_override(sweep: dict, rung: int) -> S.Override:
    """The override of rung ``rung`` of a sweep (:func:`check_sweep`): set values[rung] or add deltas[rung]."""
    if sweep["values"] is not None:
        return S.Override("set", sweep["values"][rung])
    return S.Override("add", sweep["deltas"][rung])


def sweep_rungs(sweep: dict) -> int:
    return len(sweep["values"] if sweep["values"] is not None else sweep["deltas"])


def _sweeps(raw, path):
    if not isinstance(raw, list) or not raw:
        S.fail(path, f"expected a non-empty list of sweeps, got {raw!r}")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(check_sweep(item))
        except ValueError as e:
            S.fail(S.join(path, i), str(e))
    return out


@dataclass
class Family:
    """A validated scene family. ``spec`` is the validated tree; ``source`` the file's text."""

    name: str
    path: Path
    source: str
    spec: dict

    @property
    def description(self) -> str:
        d = self.spec.get("description")
        return d.value if d else ""

    @property
    def default_size(self) -> int:
        return self.spec["size"].value

    @property
    def sweeps(self) -> list[dict]:
        """The counterfactual sweeps the family lists (``counterfactuals:``), each as :func:`check_sweep` gives it."""
        return list(self.spec.get("counterfactuals") or [])

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def sample(self, index: int, seed: int = 0, size: int | None = None, overrides: dict | None = None) -> Scene:
        """Build scene ``index`` of the dataset with seed ``seed`` at ``size`` x ``size`` pixels.

        overrides: ``{field path: schema.Override | ("set", v) | ("add", d)}``, paths as the scene's factor names
        (``object0.size``, ``object0.material.color.hsv[0]``, ``lights[0].intensity``, ``shadows``, ...). Every
        value is drawn as without them (so all other factors are the same), then the named fields are replaced
        and recorded as factors with their new values. Object placement decides on the drawn values, so
        overriding ``object0.size`` moves no other object (the resized object may then touch a neighbour). A value
        outside the field's bounds is a ValueError; a path this scene has no numeric field at (an object it lacks,
        a choice such as a shape, an object count) is an UnknownNameError listing the ones it has.
        """
        size = self.default_size if size is None else size
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"image size must be a positive integer, got {size!r}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
        sampler = S.Sampler(rng, overrides)
        scene = _build(self, sampler, size)
        missing = [p for p in sampler.overrides if p not in sampler.known]
        if missing:
            import difflib

            close = difflib.get_close_matches(missing[0], sorted(sampler.known), n=3)  # shown first: likely meant
            known = close + sorted(sampler.known - set(close))
            raise unknown("factor", missing[0], known, f"scene {index} of family {self.name}")
        return scene


def load_family(name_or_path: str | Path) -> Family:
    """Load a shipped family by name (``shapes``) or a family file by path; raises :class:`FamilyError`."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = FAMILY_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise S.UnknownFamilyError(str(name_or_path), "", f"no such family (known: "
                                       f"{', '.join(shipped_families())}; or give the path of a family file)")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise S.FamilyError(str(path), "", f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise S.FamilyError(str(path), "", f"not a text file (byte 0x{e.object[e.start]:02x} at offset {e.start} "
                            "is not UTF-8); a family file is YAML or TOML text") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise S.FamilyError(str(path), "", f"not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
                            f"{str(e).splitlines()[0]}") from None
    spec = S.run_check(_schema(path.parent), raw, str(path))
    for i, o in enumerate(spec["objects"]):
        if o["shape"] == S.Const("mesh") and o["mesh"] is None:
            raise S.FamilyError(str(path), f"objects[{i}].mesh", "required when shape is 'mesh'")
    pose = spec["camera"]["pose"]
    if pose["type"] == "look_at" and all(isinstance(v, S.Const) for v in pose["eye"] + pose["target"]):
        if np.allclose([v.value for v in pose["eye"]], [v.value for v in pose["target"]]):
            raise S.FamilyError(str(path), "camera.pose.eye", "the camera's eye is at its target")
    return Family(spec["name"].value, path, text, spec)


def shipped_families() -> list[str]:
    return sorted(p.stem for p in FAMILY_DIR.glob("*.yaml"))


# ---------------------------------------------------------------------------------------------------------- building


def _color(c) -> np.ndarray:
    """A resolved colour spec -> linear RGB."""
    if "rgb" in c:
        return srgb_to_linear(c["rgb"])
    import colorsys

    h, s, v = c["hsv"]
    return srgb_to_linear(colorsys.hsv_to_rgb((h % 360) / 360.0, s, v))


def _material(m, base: Path, seed: int) -> Material:
    t = m["texture"]
    tex = Texture(kind=t["type"], seed=seed)
    if t["type"] in ("checker", "stripes", "noise"):
        tex.scale, tex.color2 = t["scale"], _color(t["color2"])
    elif t["type"] == "image":
        tex.image = _load_image(str((base / t["path"]).resolve()))
    return Material(color=_color(m["color"]), roughness=m["roughness"], metallic=m["metallic"], texture=tex)


_IMAGES: dict[str, np.ndarray] = {}
_MESHES: dict[str, MeshShape] = {}
_PRIMS: dict[tuple, Primitive] = {}


def _load_image(path: str) -> np.ndarray:
    if path not in _IMAGES:
        from PIL import Image

        with Image.open(path) as im:
            _IMAGES[path] = srgb_to_linear(np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0)
    return _IMAGES[path]


def _shape(o, base: Path):
    if o["shape"] == "mesh":
        path = str((base / o["mesh"]).resolve())
        if path not in _MESHES:
            _MESHES[path] = MeshShape(path)
        return _MESHES[path]
    # Quantise so that continuous aspect factors do not grow the cache without bound.
    key = (o["shape"], round(o["aspect"], 6) if o["shape"] in ("box", "cylinder", "cone", "capsule") else 1.0,
           round(o["minor"], 6) if o["shape"] == "torus" else 0.35)
    if key not in _PRIMS:
        _PRIMS[key] = Primitive(o["shape"], aspect=key[1], minor=key[2])
    return _PRIMS[key]


def _rotation(yaw, pitch, roll) -> np.ndarray:
    import trimesh

    R = trimesh.transformations.euler_matrix(*np.radians([pitch, yaw, roll]), axes="sxyz")
    return R[:3, :3]


def _dir_from(azimuth, elevation) -> np.ndarray:
    """Unit vector pointing *from* the origin towards azimuth/elevation (degrees; azimuth about +y from +z)."""
    a, e = np.radians(azimuth), np.radians(elevation)
    return np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])


def _build(fam: Family, sampler: S.Sampler, size: int) -> Scene:
    base = fam.path.parent
    spec = fam.spec
    # Draw, then override: the generator is consumed the same with or without overrides.
    r = lambda tree, path: S.override(tree, S.resolve(tree, sampler, path), sampler, path)  # noqa: E731

    cam = r(spec["camera"], "camera")
    pose = cam["pose"]
    if pose["type"] == "orbit":
        eye = np.asarray(pose["target"]) + pose["radius"] * _dir_from(pose["azimuth"], pose["elevation"])
        cam_pose = look_at(eye, pose["target"])
    else:
        cam_pose = look_at(pose["eye"], pose["target"])
    camera = Camera(yfov=np.radians(cam["yfov"]), width=size, height=size, pose=cam_pose)

    lights = []
    for i, spec_l in enumerate(spec["lights"]):
        lt = r(spec_l, f"lights[{i}]")
        color, inten = _color(lt["color"]), lt["intensity"]
        if lt["type"] == "directional":
            lights.append(Light("directional", color, inten, direction=-_dir_from(lt["azimuth"], lt["elevation"])))
        else:
            pos = np.asarray(lt["position"], dtype=np.float64)
            light = Light(lt["type"], color, inten, position=pos)
            if lt["type"] == "spot":
                d = np.asarray(lt["target"]) - pos
                light.direction = d / max(np.linalg.norm(d), 1e-12)
                light.inner_angle = np.radians(min(lt["inner_angle"], lt["outer_angle"]))
                light.outer_angle = np.radians(lt["outer_angle"])
            lights.append(light)

    amb = r(spec["ambient"], "ambient")
    objects: list[SceneObject] = []
    if spec["floor"] is not None:
        fl = r(spec["floor"], "floor")
        prim = Primitive("floor", extent=fl["extent"])
        objects.append(SceneObject(prim, 1.0, np.eye(3), np.array([0.0, -prim.thickness, 0.0]),
                                   _material(fl["material"], base, sampler.rng.integers(1 << 30)), name="floor"))
    placed: list[tuple[float, float, float]] = []  # (x, z, footprint radius) of objects so far
    k = 0
    for i, spec_o in enumerate(spec["objects"]):
        count = S.resolve(spec_o["count"], sampler, f"objects[{i}].count")
        for _ in range(count):
            path = f"object{k}"
            tree_o = {key: v for key, v in spec_o.items() if key != "count"}
            # Placement decides on the drawn values (overrides come after it), so that overriding one object's
            # size or pose makes the same redraws of x, z for every object.
            o = S.resolve(tree_o, sampler, path)
            shape = _shape(o, base)
            R = _rotation(o["yaw"], o["pitch"], o["roll"])
            verts = shape.mesh().vertices @ R.T * o["size"]
            footprint = float(np.hypot(verts[:, 0], verts[:, 2]).max())
            x, z = o["x"], o["z"]
            if spec["avoid_overlap"].value == "yes":
                for _try in range(100):
                    if all(math.hypot(x - px, z - pz) >= footprint + pr for px, pz, pr in placed):
                        break
                    x = S.resolve(spec_o["x"], sampler, f"{path}.x")
                    z = S.resolve(spec_o["z"], sampler, f"{path}.z")
            placed.append((x, z, footprint))
            applied = len(sampler.applied)
            o = S.override(tree_o, {**o, "x": x, "z": z}, sampler, path)
            if len(sampler.applied) > applied:  # the object itself as overridden
                shape = _shape(o, base)
                R = _rotation(o["yaw"], o["pitch"], o["roll"])
                verts = shape.mesh().vertices @ R.T * o["size"]
            x, z = o["x"], o["z"]
            t = np.array([x, o["elevation"] - verts[:, 1].min(), z])
            mat = _material(o["material"], base, sampler.rng.integers(1 << 30))
            objects.append(SceneObject(shape, o["size"], R, t, mat, name=o["name"] or o["shape"]))
            sampler.factors[f"{path}.shape_class"] = float(_shape_index(o["shape"]))
            k += 1
    sampler.factors["object_count"] = float(k)
    bg = r(spec["background"], "background")
    # The switch as a 0/1 constant, so that it is overridable like any other field (recorded only when overridden).
    cast = int(spec["shadows"].value == "yes")
    shadows = S.override(S.Const(cast, 0, 1, True), cast, sampler, SHADOWS)
    return Scene(objects=objects, lights=lights, camera=camera,
                 ambient=amb["intensity"] * _color(amb["color"]), background=_color(bg), factors=sampler.factors,
                 shadows=bool(shadows))


def _shape_index(name: str) -> int:
    from .primitives import SHAPE_CLASSES

    return SHAPE_CLASSES.index(name)
