"""Counterfactual datasets: one factor changes between rungs; what it cannot reach stays the same bytes."""

import numpy as np
import pytest

from frobnolab.cli import main
from frobnolab.errors import UnknownNameError
from frobnolab.scenes import FamilyError, load_family
from frobnolab.scenes.counterfactual import render_counterfactual, render_sweeps, slug
from frobnolab.scenes.dataset import Dataset, RenderConfig, render_dataset
from frobnolab.scenes.render import Renderer

SIZE, BASES, SEED = 24, 3, 5
HUE = "object0.material.color.hsv[0]"


@pytest.fixture(scope="module")
def cf(tmp_path_factory):
    """One small counterfactual dataset per factor (3 bases x 2 rungs, 24 px) and the ordinary render of the
    same bases."""
    root = tmp_path_factory.mktemp("cf")
    sweeps = {HUE: dict(values=[30.0, 200.0]), "lights[0].intensity": dict(values=[0.3, 1.5]),
              "object0.material.roughness": dict(values=[0.15, 0.9]), "shadows": dict(values=[1, 0]),
              "object0.size": dict(deltas=[0.0, 0.2])}
    out = {f: Dataset(render_counterfactual("clutter", f, **kw, n=BASES, seed=SEED, size=SIZE, out=root / slug(f),
                                            workers=1, progress=False)) for f, kw in sweeps.items()}
    out["ordinary"] = Dataset(render_dataset(RenderConfig("clutter", n=BASES, size=SIZE, seed=SEED), root / "plain",
                                             workers=1, progress=False))
    return out


def _rungs(ds, name):
    """Buffer ``name`` as (bases, rungs, ...)."""
    a = ds[name][:]
    return a.reshape((ds.counterfactual["bases"], ds.counterfactual["rungs"]) + a.shape[1:])


def _same_across_rungs(ds, names):
    for name in names:
        a = _rungs(ds, name)
        assert (a == a[:, :1]).all(), f"{ds.counterfactual['factor']} changed {name}"


def _changes(ds, name) -> bool:
    a = _rungs(ds, name)
    return bool((a != a[:, :1]).any())


def test_hue_reaches_colour_only(cf):
    ds = cf[HUE]
    _same_across_rungs(ds, ["depth", "normal_world", "normal_cam", "position", "instance", "shape_class", "shading",
                            "shadow", "curvature"])
    assert _changes(ds, "albedo") and _changes(ds, "rgb")


def test_light_intensity_reaches_shading_not_geometry_or_albedo(cf):
    ds = cf["lights[0].intensity"]
    _same_across_rungs(ds, ["albedo", "depth", "normal_world", "instance", "position", "shadow"])
    assert _changes(ds, "shading")


def test_roughness_reaches_the_highlight_only(cf):
    ds = cf["object0.material.roughness"]
    _same_across_rungs(ds, ["albedo", "shading", "depth", "normal_world", "instance"])
    assert _changes(ds, "specular")


def test_shadows_switch_turns_off_cast_shadows_only(cf):
    ds = cf["shadows"]
    _same_across_rungs(ds, ["albedo", "depth", "normal_world", "instance", "position"])
    shadow = _rungs(ds, "shadow")
    assert shadow[:, 0].any() and not shadow[:, 1].any()
    assert (_rungs(ds, "shading")[:, 1] >= _rungs(ds, "shading")[:, 0]).all()  # light is only ever added
    j = ds.factor_names.index("shadows")
    assert ds.factors[:, j].tolist() == [1.0, 0.0] * BASES


def test_rung_with_delta_zero_is_the_ordinary_render(cf):
    ds, plain = cf["object0.size"], cf["ordinary"]
    assert ds.counterfactual["deltas"] == [0.0, 0.2]
    for name in plain.buffers:
        assert _rungs(ds, name)[:, 0].tobytes() == plain[name][:].tobytes(), name
    assert (ds.camera_pose[::2] == plain.camera_pose).all()


def test_shadows_on_rung_is_the_ordinary_render(cf):
    ds, plain = cf["shadows"], cf["ordinary"]
    for name in plain.buffers:
        assert _rungs(ds, name)[:, 0].tobytes() == plain[name][:].tobytes(), name


def test_size_change_moves_no_other_object(cf):
    ds = cf["object0.size"]
    for b in range(BASES):
        a, c = ds.scene(2 * b), ds.scene(2 * b + 1)  # objects[0] is the floor, objects[1] is object0
        assert c.objects[1].scale == pytest.approx(a.objects[1].scale + 0.2)
        assert c.objects[1].translation[[0, 2]].tolist() == a.objects[1].translation[[0, 2]].tolist()
        for oa, oc in zip(a.objects[2:], c.objects[2:]):
            assert oa.scale == oc.scale and (oa.translation == oc.translation).all()
            assert (oa.rotation == oc.rotation).all()
    j = ds.factor_names.index("object0.size")
    f = ds.factors[:, j].reshape(BASES, 2)
    assert np.allclose(f[:, 1] - f[:, 0], 0.2) and (f[:, 0] == cf["ordinary"].factors[
        :, cf["ordinary"].factor_names.index("object0.size")]).all()


def test_manifest_entry_factors_and_bases(cf):
    ds = cf[HUE]
    assert ds.counterfactual == {"factor": HUE, "values": [30.0, 200.0], "deltas": None, "bases": BASES, "rungs": 2}
    assert len(ds) == BASES * 2 and ds.base_of(np.arange(6)).tolist() == [0, 0, 1, 1, 2, 2]
    assert cf["ordinary"].counterfactual is None and cf["ordinary"].base_of([4, 1]).tolist() == [4, 1]
    assert ds.factors[:, ds.factor_names.index(HUE)].tolist() == [30.0, 200.0] * BASES
    # every other factor is each base's, rung after rung
    plain = cf["ordinary"]
    for j, name in enumerate(ds.factor_names):
        if name != HUE:
            k = plain.factor_names.index(name)
            assert np.array_equal(ds.factors[::2, j], plain.factors[:, k], equal_nan=True), name
            assert np.array_equal(ds.factors[1::2, j], plain.factors[:, k], equal_nan=True), name


def test_up_to_date_and_a_different_sweep_is_refused(cf, tmp_path):
    ds = cf[HUE]
    before = (ds.path / "manifest.json").read_text()
    render_counterfactual("clutter", HUE, values=[30, 200], n=BASES, seed=SEED, size=SIZE, out=ds.path, workers=1,
                          progress=False)
    assert (ds.path / "manifest.json").read_text() == before
    with pytest.raises(FileExistsError):
        render_counterfactual("clutter", HUE, values=[30, 210], n=BASES, seed=SEED, size=SIZE, out=ds.path,
                              workers=1, progress=False)


# ------------------------------------------------------------------------------------------- sampling overrides


def test_overrides_draw_first_then_replace():
    fam = load_family("clutter")
    a = fam.sample(4, seed=1, size=16)
    b = fam.sample(4, seed=1, size=16, overrides={"object0.size": ("add", 0.1), "ambient.intensity": ("set", 0.5),
                                                   "lights[0].azimuth": ("set", 10)})
    assert b.factors.pop("ambient.intensity") == 0.5  # a constant in the file becomes a factor
    assert b.factors.pop("object0.size") == pytest.approx(a.factors.pop("object0.size") + 0.1)
    assert b.factors.pop("lights[0].azimuth") == 10.0
    a.factors.pop("lights[0].azimuth")
    assert a.factors == b.factors
    assert not fam.sample(4, seed=1, size=16, overrides={"shadows": ("set", 0)}).shadows


@pytest.mark.parametrize("path, op, words", [
    (HUE, ("add", 400), [HUE, "[0, 360]"]),
    ("object0.size", ("set", 0), ["object0.size", "0", "(0, 100]"]),
    ("object0.material.roughness", ("set", 1.5), ["roughness", "1.5", "[0, 1]"]),
    ("lights[0].intensity", ("set", -1), ["lights[0].intensity", "-1", "[0, "]),
    ("shadows", ("set", 2), ["shadows", "2", "[0, 1]"]),
])
def test_out_of_bounds_override_names_field_value_and_bound(path, op, words):
    with pytest.raises(ValueError) as e:
        load_family("clutter").sample(0, size=16, overrides={path: op})
    for w in words:
        assert w in str(e.value), str(e.value)


def test_unknown_path_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match=r"object0\.siz'.*known: object0\.size"):
        load_family("clutter").sample(0, size=16, overrides={"object0.siz": ("set", 0.3)})
    with pytest.raises(UnknownNameError):  # a choice is not a numeric field
        load_family("clutter").sample(0, size=16, overrides={"object0.shape": ("set", 1)})


def test_value_equal_to_the_drawn_one_renders_the_same_bytes():
    fam = load_family("clutter")
    plain = fam.sample(2, seed=3, size=16)
    same = fam.sample(2, seed=3, size=16, overrides={"object0.material.roughness": (
        "set", plain.factors["object0.material.roughness"])})
    with Renderer(16) as r:
        a, b = r.render(plain), r.render(same)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_shadows_no_in_a_family_file(tmp_path):
    text = load_family("clutter").source
    (tmp_path / "noshadow.yaml").write_text(text.replace("name: clutter", "name: noshadow\nshadows: \"no\""))
    fam = load_family(tmp_path / "noshadow.yaml")
    with Renderer(16) as r:
        out = r.render(fam.sample(0, size=16))
    assert not out["shadow"].any()


@pytest.mark.parametrize("entry", ["{factor: object0.size}", "{factor: object0.size, values: [], deltas: [1]}",
                                   "{factor: object0.size, values: []}", "{factor: object0.size, values: [a]}",
                                   "{values: [1]}", "{factor: object0.size, values: [1], step: 2}"])
def test_family_sweeps_are_validated_at_load(tmp_path, entry):
    (tmp_path / "f.yaml").write_text(f"name: f\nobjects: [{{shape: sphere}}]\ncounterfactuals: [{entry}]\n")
    with pytest.raises(FamilyError, match=r"counterfactuals\[0\]"):
        load_family(tmp_path / "f.yaml")


# ------------------------------------------------------------------------------------- listed sweeps and the CLI


def test_family_listed_sweeps_render(tmp_path):
    fam = load_family("clutter")
    assert len(fam.sweeps) >= 5
    out = render_sweeps("clutter", n=1, seed=2, size=16, out_root=tmp_path, workers=1, progress=False)
    assert list(out) == [s["factor"] for s in fam.sweeps]
    for sweep in fam.sweeps:
        ds = Dataset(out[sweep["factor"]])
        assert out[sweep["factor"]] == tmp_path / slug(sweep["factor"])
        assert ds.counterfactual["factor"] == sweep["factor"] and len(ds) == ds.counterfactual["rungs"]


def _nothing_written(out):
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def _one_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], err[0]


def test_cli_renders_a_sweep(tmp_path, capsys):
    out = tmp_path / "cf"
    assert main(["counterfactual", "shapes", "--factor", "object0.material.roughness", "--values", "0.2,0.8",
                 "--n", "2", "--size", "16", "--out", str(out), "--workers", "1", "--quiet"]) == 0
    assert Dataset(out).counterfactual["rungs"] == 2 and len(Dataset(out)) == 4


def test_cli_unknown_factor_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "cf"
    assert main(["counterfactual", "clutter", "--factor", "object0.sise", "--deltas", "0,0.1", "--n", "2",
                 "--size", "16", "--out", str(out), "--quiet"]) == 2
    _one_line(capsys, "object0.sise", "object0.size")
    _nothing_written(out)


def test_cli_impossible_value_names_base_field_and_value(tmp_path, capsys):
    out = tmp_path / "cf"
    fam = load_family("clutter")
    hues = [fam.sample(b, seed=0, size=16).factors[HUE] for b in range(3)]
    bad = int(np.argmax(hues))
    delta = 360.5 - hues[bad]  # only that base goes past 360
    assert main(["counterfactual", "clutter", "--factor", HUE, "--deltas", f"0,{delta}", "--n", "3", "--size", "16",
                 "--out", str(out), "--quiet"]) == 2
    _one_line(capsys, f"base {bad} ", HUE, "outside", "[0, 360]")
    _nothing_written(out)


def test_cli_without_factor_needs_listed_sweeps(tmp_path, capsys):
    out = tmp_path / "cf"
    assert main(["counterfactual", "textures", "--n", "1", "--size", "16", "--out", str(out), "--quiet"]) == 2
    _one_line(capsys, "lists no counterfactuals")
    _nothing_written(out)
    assert main(["counterfactual", "clutter", "--factor", "object0.size", "--n", "1", "--out", str(out)]) == 2
    _one_line(capsys, "exactly one of --values or --deltas")
    _nothing_written(out)
