"""Feature painting with the SAE spliced in: the edit lands where it was asked, and nothing moves without one."""

import json

import numpy as np
import pytest

from frobnolab.analysis.paint import paint, pixel_mask
from frobnolab.analysis.score import read_table
from frobnolab.cli import main
from frobnolab.scenes.dataset import Dataset


def _busiest(run):
    t = read_table(run / "scores" / "features.parquet")
    return int(np.argmax(np.asarray(t["freq"], float)))


def test_an_edit_inside_a_box_changes_the_output_mostly_inside_it(tiny_run, tmp_path):
    ds = Dataset(tiny_run / "render")
    image = int(ds.split("test")[0])
    j = _busiest(tiny_run)
    r = paint(tiny_run / "scores", image, [j], op="add", value=3.0, mask="box:0,0,16,16", out=tmp_path / "p")
    assert r["mean_abs_change"]["inside"] > 0
    assert r["locality"] > 2 * r["mask_share"], r  # a quarter of the image takes far more than a quarter
    assert r["tokens_edited"] > 0 and r["distribution"]["edited_over_clean_nn_distance"] > 1.0
    assert json.loads((tmp_path / "p" / "paint.json").read_text())["features"] == [j]
    assert (tmp_path / "p" / "paint.png").stat().st_size > 0


def test_an_identity_edit_changes_nothing(tiny_run):
    image = int(Dataset(tiny_run / "render").split("test")[0])
    r = paint(tiny_run / "scores", image, [_busiest(tiny_run)], op="scale", value=1.0, mask="foreground")
    assert r["mean_abs_change"]["inside"] == 0 and r["mean_abs_change"]["outside"] == 0
    assert r["before"] == r["after"]
    assert abs(r["distribution"]["edited_over_clean_nn_distance"] - 1.0) < 1e-6


def test_masks_and_bad_input(tiny_run, tmp_path, capsys):
    ds = Dataset(tiny_run / "render")
    assert pixel_mask(ds, 0, "all").all() and pixel_mask(ds, 0, "box:0,0,2,3").sum() == 6
    assert (pixel_mask(ds, 0, "instance=0") == (np.asarray(ds["instance"][0]) == 0)).all()
    with pytest.raises(ValueError, match="box"):
        pixel_mask(ds, 0, "box:0,0,99,99")
    with pytest.raises(ValueError, match="unknown mask"):
        pixel_mask(ds, 0, "shadows")
    args = ["paint", str(tiny_run / "scores"), "--image", "0", "--features", "0", "--out", str(tmp_path / "q")]
    assert main(args + ["--add", "1", "--set", "1"]) == 2
    assert "exactly one of --set, --add or --scale" in capsys.readouterr().err
    assert main(args[:5] + ["99999", "--out", str(tmp_path / "q"), "--add", "1"]) == 2
    assert "the SAE has features" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


# ------------------------------------------------------------------------------------------- coordinate fields

SPHERE_BOX = "box3:-0.95,0,-0.15,-0.05,0.9,0.75"  # around the `single` scene's sphere (centre -0.5, 0.4, 0.3)


@pytest.fixture(scope="module")
def field_run(tiny_single, tmp_path_factory):
    """A tiny field run: a field trained briefly on `single`, a store at trunk1, a small SAE, and a scores folder
    reduced to what painting reads (summary.json's store, hook and sae; features.parquet's max_act and freq, from
    the SAE's codes of the store's held-out tokens, as frobnolab score computes them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from frobnolab.analysis.sae import SAETrainConfig, load_sae, train_sae
    from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract
    from frobnolab.models.field import FieldConfig
    from frobnolab.models.train import TrainFieldConfig, train_field

    root = tmp_path_factory.mktemp("field_run")
    train_field(tiny_single, root / "field", TrainFieldConfig(
        model=FieldConfig(hidden=32, layers=2, n_freqs=4), mode="both", steps=120, points_per_batch=1024,
        rays_per_batch=256, samples_per_ray=16, importance_samples=16), progress=False)
    store = extract(ExtractConfig(model=str(root / "field"), dataset=str(tiny_single), hooks=("trunk1",),
                                  tokens_per_image=32, samples_per_ray=8), root / "store", progress=False)
    train_sae(store, root / "sae", SAETrainConfig(hook="trunk1", width=32, k=4, training_tokens=8192, batch_size=256,
                                                  checkpoints=1), progress=False, evaluate=False)
    with torch.no_grad():
        f = load_sae(root / "sae").encode(torch.as_tensor(ActivationStore(store)["trunk1"].activations("test")))
    scores = root / "scores"
    scores.mkdir()
    pq.write_table(pa.table({"feature": np.arange(f.shape[1]), "max_act": f.max(0).values.numpy().astype(float),
                             "freq": (f > 0).float().mean(0).numpy().astype(float)}), scores / "features.parquet")
    (scores / "summary.json").write_text(json.dumps({"store": str(store), "hook": "trunk1", "sae": str(root / "sae")}))
    return root


def _view(tiny_single):
    return int(Dataset(tiny_single).split("test")[0])


def test_field_identity_edits_reproduce_the_spliced_render_exactly(field_run, tiny_single):
    from frobnolab.analysis.paint import FieldPainter

    p = FieldPainter(field_run / "scores", _view(tiny_single), SPHERE_BOX)
    for op, v in (("scale", 1.0), ("add", 0.0)):
        r = p.edit([_busiest(field_run)], op, v)
        np.testing.assert_array_equal(r["after_image"], p.before)
        assert r["mean_abs_change"] == {"inside": 0.0, "outside": 0.0} and r["before"] == r["after"]
        assert r["distribution"]["edited_over_clean_nn_distance"] == 1.0 and r["tokens_edited"] > 0


def test_a_field_edit_inside_a_3d_box_moves_only_the_rays_through_it(field_run, tiny_single, monkeypatch):
    """A planted local edit: add 3x on samples inside a box around the sphere. Every sample outside the box keeps
    its spliced activation bit for bit (read where the trunk hands it to the density head), so only the rays
    through the box change, and the change lands mostly on the box's projection (the pixels whose exact first hit
    lies in it). The view is rendered in four passes here (their samples and draws stay aligned)."""
    import torch

    from frobnolab.analysis import paint as P
    from frobnolab.analysis.paint import FieldPainter

    monkeypatch.setattr(P, "RAYS_PER_PASS", 300)
    from frobnolab.analysis.store import ActivationStore
    from frobnolab.models.hooks import hook_count

    model = ActivationStore(json.loads((field_run / "scores" / "summary.json").read_text())["store"]).load_model()
    seen = {"before": [], "after": []}
    phase = ["before"]
    h = model.density.register_forward_hook(lambda _m, args, _o: seen[phase[0]].append(args[0].clone()))
    try:
        p = FieldPainter(field_run / "scores", _view(tiny_single), SPHERE_BOX, model=model)
        phase[0] = "after"
        r = p.edit([_busiest(field_run)], "add", 3.0)
    finally:
        h.remove()
    assert hook_count(model) == 0 and not any(m._forward_pre_hooks for m in model.modules())
    assert len(seen["before"]) == len(seen["after"]) == len(p.inside) == 4
    for a, b, inside in zip(seen["before"], seen["after"], p.inside):
        assert torch.equal(a[~inside], b[~inside])  # untouched outside the region, bit for bit
        assert not inside.any() or not torch.equal(a[inside], b[inside])
    assert sum(bool(m.any()) for m in p.inside) >= 2  # the box's samples span passes
    after = r["after_image"]
    np.testing.assert_array_equal(after[:, ~p.ray_px], p.before[:, ~p.ray_px])  # rays that miss the box
    assert r["ray_locality"] == pytest.approx(1.0, abs=1e-6)
    ch = r["mean_abs_change"]
    assert ch["inside"] > 5 * ch["outside"] > 0, r
    assert r["locality"] > 3 * r["mask_share"], r  # ~10% of the pixels take ~2/3 of the change
    ds = Dataset(tiny_single)
    pos, inst = ds["position"][r["image"]], ds["instance"][r["image"]]
    lo, hi = np.array([-0.95, 0, -0.15]), np.array([-0.05, 0.9, 0.75])
    np.testing.assert_array_equal(p.m_px, (inst > 0) & ((pos >= lo) & (pos <= hi)).all(-1))


def test_field_instance_masks_stride_and_the_cli(field_run, tiny_single, tmp_path, capsys):
    from frobnolab.analysis.paint import FieldPainter, region

    view = _view(tiny_single)
    ds = Dataset(tiny_single)
    sphere = region("instance=2", ds.scene(view))
    assert sphere.contains([[-0.5, 0.4, 0.3], [0.9, 0.4, 0.3]]).tolist() == [True, False]  # the exact SDF
    p = FieldPainter(field_run / "scores", view, "instance=2", stride=2)
    assert p.before.shape == (3, 16, 16)
    np.testing.assert_array_equal(p.m_px, np.asarray(ds["instance"][view])[::2, ::2] == 2)
    r = p.edit([_busiest(field_run)], "add", 3.0)
    assert r["locality"] > 0.9 and r["stride"] == 2, r  # the sphere is convex: rays through it first hit it
    out = tmp_path / "cli"
    assert main(["paint", str(field_run / "scores"), "--image", str(view), "--features", str(_busiest(field_run)),
                 "--add", "3", "--mask", SPHERE_BOX, "--out", str(out)]) == 0
    assert "locality" in capsys.readouterr().out
    saved = json.loads((out / "paint.json").read_text())
    assert saved["domain"] == "field" and saved["mask"] == SPHERE_BOX and (out / "paint.png").stat().st_size > 0


@pytest.mark.parametrize("mask, message", [
    ("box3:0,0,0,1,1", "six numbers"), ("box3:0,0,a,1,1,1", "six numbers"), ("box3:0,0,0,nan,1,1", "finite"),
    ("box3:0,0,0,0,1,1", "box is empty"), ("box3:5,5,5,6,6,6", "no ray of view"), ("instance=9", "2 sphere"),
    ("instance=x", "instance=K"), ("foreground", "unknown field mask")])
def test_bad_field_masks_are_one_line_errors(field_run, tiny_single, tmp_path, capsys, mask, message):
    from frobnolab.analysis.paint import FieldPainter

    with pytest.raises(ValueError, match=message):
        FieldPainter(field_run / "scores", _view(tiny_single), mask)
    out = tmp_path / "q"
    assert main(["paint", str(field_run / "scores"), "--image", "0", "--features", "0", "--add", "1", "--mask", mask,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not out.exists()


def test_bad_field_values_are_refused_before_rendering(field_run, tiny_single, monkeypatch):
    from frobnolab.analysis import paint as P

    monkeypatch.setattr(P.FieldPainter, "__init__", lambda *a, **k: pytest.fail("rendered before checking"))
    for kw, message in (({"value": float("inf")}, "finite"), ({"value": float("nan")}, "finite"),
                        ({"features": [999]}, "the SAE has features"), ({"op": "paint"}, "paint operation")):
        args = {"features": [0], "op": "add", "value": 1.0, **kw}
        with pytest.raises(ValueError, match=message):
            P.paint(field_run / "scores", _view(tiny_single), args.pop("features"), mask=SPHERE_BOX, **args)


# ------------------------------------------------------------------------- pretrained image models: TAESD, SD VAE

def _reduced_scores(store, hook, sae_dir, scores):
    """A scores folder reduced to what painting reads (as ``field_run`` makes one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from frobnolab.analysis.sae import load_sae
    from frobnolab.analysis.store import ActivationStore

    with torch.no_grad():
        f = load_sae(sae_dir).encode(torch.as_tensor(ActivationStore(store)[hook].activations("test")))
    scores.mkdir()
    pq.write_table(pa.table({"feature": np.arange(f.shape[1]), "max_act": f.max(0).values.numpy().astype(float),
                             "freq": (f > 0).float().mean(0).numpy().astype(float)}), scores / "features.parquet")
    (scores / "summary.json").write_text(json.dumps({"store": str(store), "hook": hook, "sae": str(sae_dir)}))
    return scores


@pytest.mark.parametrize("kind,hook", [("taesd", "enc3"), ("taesd", "dec3"), ("sd-vae", "enc_mid"),
                                       ("sd-vae", "dec_up0")])
def test_painting_pretrained_autoencoders_at_encoder_and_decoder_hooks(kind, hook, tiny_dataset, taesd_dir,
                                                                       tmp_path):
    """TAESD (the real weights) and the SD VAE path (a tiny random AutoencoderKL saved as a diffusers folder), at an
    encoder and a decoder hook: an identity edit changes nothing, an edit in a box lands mostly in it."""
    from frobnolab.analysis.paint import Painter
    from frobnolab.analysis.sae import SAETrainConfig, train_sae
    from frobnolab.analysis.store import ExtractConfig, extract

    if kind == "sd-vae":
        from tests.models.test_hooks import tiny_kl

        tiny_kl().net.save_pretrained(tmp_path / "vae")
        model = f"sd-vae:{tmp_path / 'vae'}"
    else:
        model = f"taesd:{taesd_dir}"
    store = extract(ExtractConfig(model=model, dataset=str(tiny_dataset), hooks=(hook,), tokens_per_image=32),
                    tmp_path / "store", progress=False)
    train_sae(store, tmp_path / "sae", SAETrainConfig(hook=hook, width=16, k=4, training_tokens=4096, batch_size=128,
                                                      checkpoints=1), progress=False, evaluate=False)
    scores = _reduced_scores(store, hook, tmp_path / "sae", tmp_path / "scores")
    image = int(Dataset(tiny_dataset).split("test")[0])
    t = read_table(scores / "features.parquet")
    j = int(np.argmax(np.asarray(t["freq"], float)))
    p = Painter(scores, image, "box:0,0,16,16", reference_tokens=2000)
    same = p.edit([j], "scale", 1.0)
    assert same["mean_abs_change"]["inside"] == 0 and same["mean_abs_change"]["outside"] == 0
    r = p.edit([j], "add", 3.0)
    assert r["mean_abs_change"]["inside"] > r["mean_abs_change"]["outside"] > 0 or (
        r["mean_abs_change"]["inside"] > 0 and r["mean_abs_change"]["outside"] == 0), r["mean_abs_change"]
    assert r["locality"] > r["mask_share"], (r["locality"], r["mask_share"])
