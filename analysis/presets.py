"""Named SAE presets: common hook points of the lab's models, and run sizes.

A preset is a dict of :class:`frobnolab.analysis.sae.SAETrainConfig` fields; the command line applies the preset
first, then any option given explicitly.

| preset | hook | what |
| --- | --- | --- |
| taesd-enc-mid | enc7 | TAESD encoder, a middle block at stride 4 (64 channels) |
| taesd-dec-mid | dec7 | TAESD decoder, a middle block at stride 4 (64 channels) |
| ae-bottleneck | latent | the small autoencoder's code |
| nerf-hidden | trunk2 | the coordinate field's third hidden layer |
| tiny | - | seconds: for tests and smoke runs |
| quickstart | - | the main job's size on a CPU |
"""

from frobnolab.errors import unknown

PRESETS: dict[str, dict] = {
    "taesd-enc-mid": {"hook": "enc7", "architecture": "topk", "width": 512, "k": 16},
    "taesd-dec-mid": {"hook": "dec7", "architecture": "topk", "width": 512, "k": 16},
    "ae-bottleneck": {"hook": "latent", "architecture": "topk", "width": 64, "k": 4},
    "nerf-hidden": {"hook": "trunk2", "architecture": "topk", "width": 512, "k": 16},
    "tiny": {"width": 32, "k": 4, "training_tokens": 16384, "batch_size": 256, "lr": 3e-3, "checkpoints": 1},
    "quickstart": {"width": 256, "k": 8, "training_tokens": 400_000, "batch_size": 1024, "lr": 2e-3},
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise unknown("SAE preset", name, PRESETS)
    return dict(PRESETS[name])
