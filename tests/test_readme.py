"""The README's walkthrough runs top to bottom as written, on tiny sizes.

The walkthrough is every fenced ``bash`` block between the README's ``<!-- walkthrough: ... -->`` and
``<!-- walkthrough end -->`` comments. The test runs its commands in order in one bash shell (so ``source`` and
``export`` carry over), in a temporary copy of the repository with the venv linked in as ``.venv``, and fails naming
the first command that exits non-zero. Before running, it shrinks the sizes with SIZES (each entry must still match the
README, so the table cannot silently go stale) and leaves out the commands in LEFT_OUT, each for the reason given.
TAESD's weights come from the ``taesd_dir`` fixture, so nothing is downloaded.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- walkthrough:", "<!-- walkthrough end -->"
MARK = "+++walkthrough+++"  # printed before each command, so that a failure shows that command's output only

# (pattern, replacement): regular expressions applied to each command, in order
SIZES = [
    (r"--n 1000 --size 64", "--n 16 --size 32 --workers 1"),          # render shapes
    (r"--n 96 --size 64", "--n 16 --size 32 --workers 1"),            # render single
    (r"--n 100 (--out \S+/mine) --workers 2", r"--n 4 \1 --workers 1"),  # render your own family
    (r"--n 8 --size 64", "--n 2 --size 32 --workers 1"),              # counterfactual renders
    (r"--steps 1500", "--steps 5"),                                   # train-ae
    (r"--max-seconds 180", "--steps 5"),                              # train-field
    (r"^frobnolab (train-sae|sweep-sae) ", r"frobnolab \1 --tokens 4096 --batch-size 256 "),
    (r"--width 256", "--width 32"),
    (r"--preset taesd-enc-mid", "--preset taesd-enc-mid --width 32"),
    (r"--widths 128,256", "--widths 16 --sparsities 1"),              # sweep: two SAEs (one topk, one standard)
    (r"--ks 4,8,16", "--ks 2"),
    (r"^frobnolab score ", "frobnolab score --nulls 8 --bootstrap 5 --causal-top 8 --scene-steps 50 "),
    (r"^frobnolab gallery ", "frobnolab gallery --pages 2 "),
    # a server would not return: check instead what the notebook needs from the command (JupyterLab there, the run
    # found from the notebook's folder, where JupyterLab starts its kernel); tests/analysis/test_notebook.py executes
    # every cell of the notebook on a run
    (r"jupyter lab (analysis/gallery\.ipynb)", r"python .run_notebook.py \1"),
]

# What `jupyter lab NOTEBOOK` needs, checked headless. (Executing the notebook's cells here too, with nbclient, hung in
# a full-suite run: the kernel and the client both idle, a message lost; test_notebook.py executes them.)
RUN_NOTEBOOK = """
import os, subprocess, sys
from pathlib import Path
from frobnolab.analysis.gallery import load_run
path = Path(sys.argv[1])
assert path.is_file(), path
subprocess.run(["jupyter", "lab", "--version"], check=True, stdin=subprocess.DEVNULL, timeout=120)
os.chdir(path.parent)  # where JupyterLab starts the notebook's kernel
run = load_run(os.environ["FROBNOLAB_RUN"])
print(f"{path}: JupyterLab is there; its kernel finds the run {run.scores} ({len(run.table['feature'])} features)")
"""

# pattern: why the command is not run here
LEFT_OUT = {
    r"^frobnolab validate-scorer ": "renders 160 images at 64x64 and scores planted truth: minutes; "
                                    "tests/analysis/test_score.py runs the validation",
    r"^frobnolab validate-counterfactual ": "renders six sweeps of six base scenes per seed, three seeds; "
                                            "tests/analysis/test_counterfactual_planted.py runs seed 0",
}


def walkthrough(readme: str) -> list[str]:
    """The walkthrough's commands, one per entry (backslash continuations joined, comments and blank lines dropped)."""
    assert BEGIN in readme and END in readme, "README.md has lost its walkthrough markers"
    part = readme[readme.index(BEGIN):readme.index(END)]
    blocks = re.findall(r"^```bash\n(.*?)^```", part, flags=re.M | re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def tiny(commands: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The commands with SIZES applied and LEFT_OUT removed; and (command, reason) for each one left out."""
    used, run, left = set(), [], []
    for cmd in commands:
        reason = next((why for pat, why in LEFT_OUT.items() if re.search(pat, cmd)), None)
        if reason:
            left.append((cmd, reason))
            continue
        for i, (pat, rep) in enumerate(SIZES):
            cmd, n = re.subn(pat, rep, cmd)
            used.update([i] if n else [])
        run.append(cmd)
    stale = [SIZES[i][0] for i in range(len(SIZES)) if i not in used]
    assert not stale, f"size substitutions that no longer match the README's walkthrough: {stale}"
    return run, left


def test_walkthrough_commands_are_found_and_shrunk():
    commands = walkthrough((ROOT / "README.md").read_text())
    assert commands[0] == "source .venv/bin/activate"
    run, left = tiny(commands)
    assert all(re.match(r"(frobnolab|FROBNOLAB_RUN=\S+ python \.run_notebook\.py|source) ", c) for c in run), run
    assert [c for c, _ in left] and len(run) + len(left) == len(commands)
    # every output goes under one run folder that git ignores, never into a source package
    for cmd in commands:
        for out in re.findall(r"--out (\S+)", cmd) + re.findall(r"> (\S+)", cmd):
            assert out.startswith("runs/walkthrough/"), cmd


def test_readme_walkthrough_runs_top_to_bottom(tmp_path, taesd_dir):
    run, left = tiny(walkthrough((ROOT / "README.md").read_text()))
    for cmd, why in left:
        print(f"left out: {cmd}\n    because it {why}")
    work = tmp_path / "repo"
    shutil.copytree(ROOT, work, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "data", "stores", "saes", "sweeps", "__pycache__", "*.egg-info", ".pytest_cache",
        ".hypothesis"))
    (work / ".venv").symlink_to(Path(sys.prefix))  # the README's `source .venv/bin/activate` finds this venv
    (work / ".run_notebook.py").write_text(RUN_NOTEBOOK)
    step = work / ".walkthrough-step"
    script = ["set -eo pipefail"]
    for cmd in run:
        script += [f"printf '%s' {shlex.quote(cmd)} > {shlex.quote(str(step))}",
                   f"printf '\\n%s %s\\n' {MARK} {shlex.quote(cmd)}", cmd]
    script.append(f"rm {shlex.quote(str(step))}")
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", "FROBNOLAB_TAESD_DIR": str(taesd_dir),
           "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the shell and whatever it started (a notebook kernel, render workers)
        output, _ = proc.communicate()
        pytest.fail(f"README walkthrough command ran past 15 minutes: {step.read_text()}\n{output[-4000:]}")
    failed = step.read_text() if step.exists() else None
    assert proc.returncode == 0 and failed is None, (
        f"README walkthrough command failed (exit {proc.returncode}): {failed}\n--- its output (tail):\n"
        f"{output.rpartition(MARK)[2][-4000:]}")
    for made in ("runs/walkthrough/data/shapes/manifest.json", "runs/walkthrough/models/field/model.json",
                 "runs/walkthrough/stores/taesd/manifest.json", "runs/walkthrough/sweeps/ae-enc1/frontier.png",
                 "runs/walkthrough/scores/taesd/summary.json", "runs/walkthrough/gallery/index.html"):
        assert (work / made).exists(), made
    assert not any((work / d).exists() for d in ("data", "stores", "saes", "sweeps", "models/ae", "models/field"))
    lab = subprocess.run([Path(sys.prefix) / "bin" / "jupyter", "lab", "--version"], capture_output=True, text=True)
    assert lab.returncode == 0, f"`jupyter lab` does not start: {lab.stderr[-2000:]}"
