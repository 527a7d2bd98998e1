"""The main job: one run folder, every stage in turn, each skipped when its output is already up to date.

    runs/NAME/render/    dataset (frobnolab.scenes)
    runs/NAME/ae/        the small autoencoder trained on it
    runs/NAME/store/     activation store of its hook point
    runs/NAME/sae/       SAE (sae-lens format in sae/sae)
    runs/NAME/scores/    per-feature scores, summary and report (frobnolab.analysis.score); baselines.json
    runs/NAME/baselines/ the baseline dictionaries (units, PCA, ...) scored beside the SAE (analysis/baseline_table.py)
    runs/NAME/counterfactual/ the family's counterfactual sweeps (data/) and each model's stores on them (store/,
                         taesd-store/); the SAE features' responses go into scores/ and taesd-scores/ (responses.*)
    runs/NAME/gallery/   the static feature gallery (index.html)
    runs/NAME/taesd-*/   the same for TAESD, when its weights are found (models.pretrained.find_taesd), its null
                         model (random-taesd) and baselines included
    runs/NAME/compare/   the autoencoder's and TAESD's features matched on the same pixels (analysis/compare.py)
    runs/NAME/*scores/verdicts.json  each frobnoloid candidate against the random model, the baselines and the
                         counterfactuals (analysis/verdict.py), also in the report
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from frobnolab.models.conv_ae import ConvAEConfig
from frobnolab.models.train import TrainAEConfig, train_autoencoder
from frobnolab.scenes.dataset import RenderConfig, render_dataset

from frobnolab.files import dumps, write_json

from .run import score_sae
from .sae import SAETrainConfig, train_sae, weights_sha256
from .score import ScoreConfig
from .store import ActivationStore, ExtractConfig, extract


@dataclass
class QuickstartConfig:
    family: str = "shapes"
    """Scene family of the run."""
    images: int = 512
    """Images rendered (every 8th held out: 64 held-out images)."""
    size: int = 128
    """Image side in pixels."""
    ae: TrainAEConfig = field(default_factory=lambda: TrainAEConfig(steps=1500, batch_size=16, crop=64,
                                                                    channels_last=True))
    """The small autoencoder's training."""
    hook: str = "enc1"
    """The autoencoder's hook point to study."""
    sae: SAETrainConfig = field(default_factory=lambda: SAETrainConfig(hook="enc1", width=128, k=8,
                                                                          training_tokens=1_000_000, lr=2e-3))
    """The SAE on that hook point: 4x its 32 channels (measured at 8x: 11-18% dead latents at 1-2M tokens)."""
    taesd_hook: str = "enc7"
    """TAESD's hook point (used when TAESD weights are given)."""
    taesd_sae: SAETrainConfig = field(default_factory=lambda: SAETrainConfig(hook="enc7", width=256, k=8,
                                                                                training_tokens=1_000_000, lr=2e-3))
    """The SAE on TAESD's hook point: 4x its 64 channels."""
    taesd_tokens_per_image: int = 0
    """Tokens kept per image from TAESD (0: all)."""
    score: ScoreConfig = field(default_factory=lambda: ScoreConfig(causal_images=8))
    """Feature scoring. Causal effects on 8 held-out images (131,072 pixels at 128 px, twice the 16 images at 64 px
    of the earlier default): TAESD's ablations, a decoder pass each, are the main job's largest cost."""
    random_null: bool = True
    """Also run the same recipe (store, SAE, scores) on a randomly initialised autoencoder: the null model."""
    baselines: tuple[str, ...] = ("units", "pca", "random")
    """Baseline dictionaries scored on the autoencoder's hook beside its SAE (kind or kind:N; () for none; nmf's
    fit alone took 68 s of the main job, so it is not in the default)."""
    taesd_baselines: tuple[str, ...] = ("units", "pca")
    """Baselines scored on TAESD's hook beside its SAE, so its frobnoloid candidates face them too (() for none)."""
    taesd_random_null: bool = True
    """Also run TAESD's recipe on TAESD with random weights (``random-taesd``): the null model its candidates
    must beat."""
    counterfactual_bases: int = 4
    """Base scenes of each counterfactual sweep the family lists (``counterfactuals:`` in its file): each studied
    model's SAE features' responses to each factor moved alone (``analysis/counterfactual.py``); 0: no
    counterfactual stages."""
    counterfactual_tokens: int = 256
    """Tokens kept per counterfactual image (the same positions at every rung of a base; 0: all)."""
    seed: int = 0
    """Seed of every stage."""

    def __post_init__(self):
        for name, hook, sae in (("sae", self.hook, self.sae), ("taesd_sae", self.taesd_hook, self.taesd_sae)):
            if sae.hook != hook:
                raise ValueError(f"QuickstartConfig.{name}.hook is {sae.hook!r} but the hook studied is {hook!r}")


QUICKSTART_PRESETS = {
    "quickstart": QuickstartConfig(),
    # the default study at twice the side (4x the tokens a hook), for a CUDA machine: `--preset gpu --device cuda`
    "gpu": QuickstartConfig(size=256),
    "tiny": QuickstartConfig(images=16, size=32,
                             ae=TrainAEConfig(model=ConvAEConfig(channels=(8, 16), latent_channels=4), steps=30,
                                              batch_size=8),
                             hook="enc0",
                             sae=SAETrainConfig(hook="enc0", width=32, k=4, training_tokens=32768, batch_size=256,
                                                lr=3e-3, checkpoints=1),
                             taesd_tokens_per_image=32,
                             taesd_sae=SAETrainConfig(hook="enc7", width=32, k=4, training_tokens=32768,
                                                      batch_size=256, lr=3e-3, checkpoints=1),
                             score=ScoreConfig(n_null=8, bootstrap=5, causal_top=8, scene_steps=200),
                             baselines=("units",), taesd_baselines=("units",), counterfactual_bases=2,
                             counterfactual_tokens=32),
}


def _score(store: Path, sae: Path, out: Path, cfg: ScoreConfig, progress: bool):
    """Score unless ``out`` already holds scores of this SAE on this store with this config."""
    done = out / "summary.json"
    if done.exists():
        s = json.loads(done.read_text())
        if s.get("config") == json.loads(json.dumps(asdict(cfg))) and \
                s.get("sae_sha256") == weights_sha256(sae):
            return s
    return score_sae(store, sae, out, cfg, progress=progress, log=lambda *_: None)


def _random_model_null(out: Path, data: Path, cfg: QuickstartConfig, progress: bool, *, prefix: str = "",
                       model: str | None = None, hook: str | None = None, sae: SAETrainConfig | None = None,
                       tokens_per_image: int = 0) -> dict:
    """The same recipe on a randomly initialised model; writes ``PREFIXscores/random_model_null.json``: the 95th
    percentile of each score over the null model's features, and the share of the real features above it. The
    autoencoder's null is a fresh initialisation saved as ``null-ae``; another model's is ``model`` (a spec such as
    ``random-taesd:SEED``), with its own ``hook`` and ``sae`` recipe, into ``PREFIXnull-*``."""
    import numpy as np
    import torch

    from frobnolab.models.conv_ae import ConvAutoencoder
    from frobnolab.models.io import save_model

    from .score import read_table

    hook, sae = hook or cfg.hook, sae or cfg.sae
    if model is None:
        if not (out / "null-ae" / "model.json").exists():
            torch.manual_seed(cfg.seed + 1)
            save_model(ConvAutoencoder(cfg.ae.model), out / "null-ae", record={"note": "random initialisation (null)"})
        model = str((out / "null-ae").resolve())
    store, sae_dir, null_scores = (out / f"{prefix}null-{k}" for k in ("store", "sae", "scores"))
    extract(ExtractConfig(model=model, dataset=str(data.resolve()), hooks=(hook,), seed=cfg.seed,
                          tokens_per_image=tokens_per_image, device=cfg.ae.device), store, force=True,
            progress=progress)
    train_sae(store, sae_dir, sae, progress=progress)
    # only its features' scores are used (their 95th percentiles), not its own false-discovery tests: 32 nulls
    _score(store, sae_dir, null_scores, replace(cfg.score, n_null=32), progress)
    real = read_table(out / f"{prefix}scores" / "features.parquet")
    null = read_table(null_scores / "features.parquet")
    res = {}
    for k in ("named_best", "scene_r2", "auroc", "gap", "frob"):
        r = np.asarray(real[k], float)[np.asarray(real["freq"]) > 0]
        n = np.asarray(null[k], float)[np.asarray(null["freq"]) > 0]
        n = n[np.isfinite(n)]
        q = float(np.quantile(n, 0.95)) if len(n) else float("nan")
        res[k] = {"null95": q, "share_of_real_features_above": float(np.mean(r > q)) if len(r) else float("nan")}
    res["model"] = model if prefix else "a fresh initialisation of the autoencoder (null-ae)"
    path = out / f"{prefix}scores" / "random_model_null.json"
    if not path.exists() or json.loads(path.read_text()) != json.loads(dumps(res)):  # unchanged: left as it is
        write_json(path, res)
    return res


def _baselines(out: Path, cfg: QuickstartConfig, progress: bool, *, prefix: str = "", hook: str | None = None,
               specs: tuple[str, ...] | None = None) -> dict:
    """Score each baseline of ``specs`` (default ``cfg.baselines``) on a model's hook (default the autoencoder's)
    against its SAE's null features (unless its scores are newer than those nulls and of this config), the layer's
    supervised ceiling, then ``PREFIXscores/baselines.json`` and the report's "Baselines" section."""
    from .baseline_table import comparison
    from .report import baseline_lines, replace_section
    from .run import score_baseline
    from .scoring.ceiling import probe_ceiling

    hook = hook or cfg.hook
    specs = cfg.baselines if specs is None else specs
    store = ActivationStore(out / f"{prefix}store")
    scores = out / f"{prefix}scores"
    nulls = scores / "null_features.parquet"
    want = json.loads(dumps(asdict(cfg.score)))
    folders = {"sae": scores}
    for spec in specs:
        folder = out / f"{prefix}baselines" / spec.replace(":", "-")
        done = folder / "summary.json"
        prev = json.loads(done.read_text()) if done.exists() else {}
        fresh = bool(prev) and done.stat().st_mtime_ns >= nulls.stat().st_mtime_ns and prev.get("config") == want \
            and prev.get("store_hook_sha256") == store[hook].meta["sha256"]
        if not fresh:
            score_baseline(out / f"{prefix}store", spec, folder, cfg.score, hook=hook, progress=progress,
                           log=lambda *_: None, nulls_from=scores)
        folders[spec] = folder
    ceiling = probe_ceiling(store[hook], store.concepts, seed=cfg.seed)
    res = {"hook": hook, **comparison(folders, ceiling, root=out), "ceiling": ceiling}
    path = scores / "baselines.json"
    if not path.exists() or json.loads(path.read_text()) != json.loads(dumps(res)):  # unchanged: left as it is
        write_json(path, res)
    replace_section(scores / "report.md", baseline_lines(res))
    return res


def _counterfactual(out: Path, cfg: QuickstartConfig, workers: int, progress: bool, *, model: str, hook: str,
                    scores: str, stores: str) -> dict:
    """Render the family's counterfactual sweeps on ``counterfactual_bases`` base scenes (once for every model),
    extract ``model``'s ``hook`` on each into ``counterfactual/STORES/``, and measure the SAE features' responses
    into ``SCORES/`` (responses.*, the report's section); skipped when the responses were measured from the same SAE
    and the same tokens."""
    from frobnolab.scenes.counterfactual import render_sweeps, slug

    from .counterfactual import ResponseConfig, inputs_of, respond

    root = out / "counterfactual"
    data = render_sweeps(cfg.family, cfg.counterfactual_bases, seed=cfg.seed, size=cfg.size, out_root=root / "data",
                         workers=workers, progress=progress, command="frobnolab quickstart")
    made = [extract(ExtractConfig(model=model, dataset=str(d.resolve()), hooks=(hook,),
                                  tokens_per_image=cfg.counterfactual_tokens, seed=cfg.seed, device=cfg.ae.device),
                    root / stores / slug(f), force=True, progress=progress) for f, d in data.items()]
    done = out / scores / "responses.json"
    if done.exists():  # up to date when measured from the same SAE and the same tokens (by content)
        prev = json.loads(done.read_text())
        summary = json.loads((out / scores / "summary.json").read_text())
        if prev.get("inputs") == inputs_of(summary, [ActivationStore(st) for st in made], hook) and \
                prev.get("config") == json.loads(dumps(asdict(ResponseConfig()))):
            return prev
    return respond(out / scores, made, progress=progress)


def _verdicts(out: Path, cfg: QuickstartConfig, taesd: bool) -> dict:
    """Each model's frobnoloid candidates against every other kind of evidence the run has (``analysis/verdict.py``):
    ``SCORES/verdicts.json`` and the report's "Frobnoloid verdicts" section (files left as they are when
    unchanged)."""
    from .report import replace_section
    from .verdict import report_lines, verdicts

    res = {}
    for prefix, specs in (("", cfg.baselines), ("taesd-", cfg.taesd_baselines)):
        folder = f"{prefix}scores"
        if prefix and not taesd:
            continue
        v = verdicts(out / folder, random_null=out / folder / "random_model_null.json",
                     baselines={b: out / f"{prefix}baselines" / b.replace(":", "-") for b in specs})
        path = out / folder / "verdicts.json"
        if not path.exists() or json.loads(path.read_text()) != json.loads(dumps(v)):
            write_json(path, v)
            replace_section(out / folder / "report.md", report_lines(v))
        res[folder] = v
    return res


def _compare(out: Path) -> dict:
    """The autoencoder's and TAESD's SAE features matched on the same held-out pixels (``analysis/compare.py``):
    ``compare/compare.json`` and ``compare.md``, unless newer than both scores."""
    from .compare import compare

    done = out / "compare" / "compare.json"
    newest = max((out / f / "summary.json").stat().st_mtime_ns for f in ("scores", "taesd-scores"))
    if done.exists() and done.stat().st_mtime_ns >= newest:
        return json.loads(done.read_text())
    return compare(out / "scores", out / "taesd-scores", out / "compare")


def _gallery(scores: Path, out: Path, progress: bool):
    """Build the gallery unless it is newer than the scores it shows."""
    from .gallery import build_gallery

    index = out / "index.html"
    shown = [scores / "summary.json"] + [p for p in [scores / "responses.json"] if p.exists()]
    if index.exists() and index.stat().st_mtime >= max(p.stat().st_mtime for p in shown):
        return out
    return build_gallery(scores, out, progress=progress)


# the file whose modification time says when each stage last made its output
STAGE_OUTPUTS = {"render": "render/manifest.json", "train-ae": "ae/training.json", "extract": "store/manifest.json",
                 "train-sae": "sae/training.json", "score": "scores/summary.json",
                 "null-model": "scores/random_model_null.json", "baselines": "scores/baselines.json",
                 "counterfactual": "scores/responses.json", "gallery": "gallery/index.html",
                 "extract-taesd": "taesd-store/manifest.json", "train-sae-taesd": "taesd-sae/training.json",
                 "score-taesd": "taesd-scores/summary.json", "counterfactual-taesd": "taesd-scores/responses.json",
                 "null-model-taesd": "taesd-scores/random_model_null.json",
                 "baselines-taesd": "taesd-scores/baselines.json",
                 "gallery-taesd": "taesd-gallery/index.html", "verdicts": "scores/verdicts.json",
                 "compare": "compare/compare.json"}


def check_taesd(taesd: str | Path) -> Path:
    """The TAESD weights folder, checked (both files there, and loadable) before any stage runs."""
    from frobnolab.models.io import load_model

    path = Path(taesd)
    if not path.is_dir():
        raise FileNotFoundError(f"--taesd {taesd}: no such folder (it should hold taesd_encoder.safetensors and "
                                f"taesd_decoder.safetensors)")
    load_model(f"taesd:{path.resolve()}")
    return path


def on_device(cfg: QuickstartConfig, device: str) -> QuickstartConfig:
    """``cfg`` with every stage's torch device set to ``device`` (training, extraction, SAEs, scoring)."""
    return replace(cfg, ae=replace(cfg.ae, device=device), sae=replace(cfg.sae, device=device),
                   taesd_sae=replace(cfg.taesd_sae, device=device), score=replace(cfg.score, device=device))


def run_quickstart(cfg: QuickstartConfig, out: str | Path, taesd: str | None = None, workers: int = 0,
                   progress: bool = True, log=print, device: str = "cpu") -> dict:
    """Run every stage into ``out``; returns {stage: seconds} of this call. ``out/stages.json`` keeps, for every
    stage, the seconds of the run that made its output (``seconds``), which stages this call found up to date
    (``skipped``) and this call's own times (``this_run``). ``device`` ("cpu", "cuda", "cuda:1") runs every torch
    stage there; rendering picks its own OpenGL platform (``scenes/gl.py``)."""
    if device != "cpu":
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"run_quickstart: device {device!r} requested but CUDA is not available")
        cfg = on_device(cfg, device)
    if taesd:
        check_taesd(taesd)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    before = json.loads((out / "stages.json").read_text()) if (out / "stages.json").exists() else {}
    made = dict(before.get("seconds", {}))
    skipped = []

    def stage(name, fn):
        marker = out / STAGE_OUTPUTS[name]
        stamp = marker.stat().st_mtime_ns if marker.exists() else None
        t = time.time()
        res = fn()
        times[name] = round(time.time() - t, 2)
        if stamp is not None and marker.exists() and marker.stat().st_mtime_ns == stamp and name in made:
            skipped.append(name)
            log(f"[{name}] up to date")
        else:
            made[name] = times[name]
            log(f"[{name}] done in {times[name]:.1f} s")
        return res
    data = stage("render", lambda: render_dataset(
        RenderConfig(cfg.family, n=cfg.images, size=cfg.size, seed=cfg.seed), out / "render", workers=workers,
        progress=progress, command="frobnolab quickstart"))
    stage("train-ae", lambda: train_autoencoder(data, out / "ae", cfg.ae, progress=progress))
    stage("extract", lambda: extract(ExtractConfig(model=str((out / "ae").resolve()), dataset=str(data.resolve()),
                                                   hooks=(cfg.hook,), seed=cfg.seed, device=device), out / "store",
                                     force=True,
                                     progress=progress))
    stage("train-sae", lambda: train_sae(out / "store", out / "sae", cfg.sae, progress=progress))
    stage("score", lambda: _score(out / "store", out / "sae", out / "scores", cfg.score, progress))
    if cfg.random_null:
        stage("null-model", lambda: _random_model_null(out, data, cfg, progress))
    if cfg.baselines:
        stage("baselines", lambda: _baselines(out, cfg, progress))
    if cfg.counterfactual_bases:
        stage("counterfactual", lambda: _counterfactual(out, cfg, workers, progress, model=str((out / "ae").resolve()),
                                                        hook=cfg.hook, scores="scores", stores="store"))
    stage("gallery", lambda: _gallery(out / "scores", out / "gallery", progress))
    if taesd:
        stage("extract-taesd", lambda: extract(ExtractConfig(
            model=f"taesd:{Path(taesd).resolve()}", dataset=str(data.resolve()), hooks=(cfg.taesd_hook,),
            tokens_per_image=cfg.taesd_tokens_per_image, seed=cfg.seed, device=device), out / "taesd-store",
            force=True, progress=progress))
        stage("train-sae-taesd", lambda: train_sae(out / "taesd-store", out / "taesd-sae", cfg.taesd_sae,
                                                   progress=progress))
        stage("score-taesd", lambda: _score(out / "taesd-store", out / "taesd-sae", out / "taesd-scores", cfg.score,
                                            progress))
        if cfg.taesd_random_null:
            stage("null-model-taesd", lambda: _random_model_null(
                out, data, cfg, progress, prefix="taesd-", model=f"random-taesd:{cfg.seed + 1}", hook=cfg.taesd_hook,
                sae=cfg.taesd_sae, tokens_per_image=cfg.taesd_tokens_per_image))
        if cfg.taesd_baselines:
            stage("baselines-taesd", lambda: _baselines(out, cfg, progress, prefix="taesd-", hook=cfg.taesd_hook,
                                                        specs=cfg.taesd_baselines))
        if cfg.counterfactual_bases:
            stage("counterfactual-taesd", lambda: _counterfactual(
                out, cfg, workers, progress, model=f"taesd:{Path(taesd).resolve()}", hook=cfg.taesd_hook,
                scores="taesd-scores", stores="taesd-store"))
        stage("gallery-taesd", lambda: _gallery(out / "taesd-scores", out / "taesd-gallery", progress))
    stage("verdicts", lambda: _verdicts(out, cfg, bool(taesd)))
    if taesd:
        stage("compare", lambda: _compare(out))
    write_json(out / "stages.json", {"seconds": {k: made[k] for k in times}, "skipped": skipped, "this_run": times,
                                     "config": asdict(cfg), "taesd": str(taesd) if taesd else None,
                                     "device": device})
    return times
