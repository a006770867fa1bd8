"""Wall time of ``python -m autograder similarity`` on a class of generated uploads.

    python -m benchmarks.bench_similarity [--uploads 500] [--jobs 2] [--cores 0,1] [--keep DIR]

Each upload holds what cs444_mp3 collects: ``test_flower.txt`` (1,638 lines, 102 classes),
``test_pixmo.txt`` (500 lines, 20 classes), ``transformer_utils.py`` and the two training
scripts. Predictions are simulated (real models would take hours): upload ``u`` has its own
accuracy (0.80-0.95 on flowers, 0.35-0.60 on PixMo) and each image its own difficulty, so
its chance to be right is ``sigmoid(ability_u - difficulty_i)``; a wrong answer is drawn from
that image's few confusable classes (three, Dirichlet weights), as real models confuse
similar flowers. ``transformer_utils.py`` is the student starter with answers of the corpus
(tests/variants/) in its exercise regions and a random helper of the student's own, names
randomly changed (with 18 answers in the corpus, many honest uploads hold the same two
answers: the helper is what tells them apart); each script embeds, as
``python -m kit.upload`` does, the kit modules of a training run and the student's
``transformer_utils.py`` as strings. Three pairs are planted copies (20 changed lines in the
predictions, a renamed transformer_utils.py); their ranks are printed. Generation is not
timed; the command is, in a process of its own, from start to the written report.
"""

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOWER, PIXMO = (1638, 102), (500, 20)
SCRIPT_MODULES = (  # what demo_flower's run imports from the kit's folder (about)
    "kit/__init__.py", "kit/config.py", "kit/trainer.py", "kit/runs.py", "kit/stopping.py",
    "kit/flower/__init__.py", "kit/flower/recipe.py", "custom_dataset.py", "fine_tune.py",
    "vision_transformer.py", "demo_flower.py",
)  # fmt: skip
COPIES = 3


REGION = re.compile(r"^( *)# ---- YOUR CODE START \((\w+)\) ----\n.*?# ---- YOUR CODE END ----\n",
                    re.MULTILINE | re.DOTALL)  # fmt: skip


def solution(starter_text, bodies):
    """The starter's transformer_utils.py with ``bodies`` ({exercise: code}) written in
    between its YOUR CODE markers, as a student does."""

    def fill(match):
        indent, exercise = match.group(1), match.group(2)
        if exercise not in bodies:
            return match.group(0)
        body = "".join(indent + line + "\n" for line in bodies[exercise].splitlines())
        return f"{indent}# ---- YOUR CODE START ({exercise}) ----\n{body}{indent}# ---- YOUR CODE END ----\n"

    return REGION.sub(fill, starter_text)


def simulate(rng, n, images, classes, low, high):
    """``(labels, answers)``: ``n`` uploads' predictions (module docstring)."""
    labels = rng.integers(0, classes, images)
    difficulty = rng.normal(0, 1.5, images)
    confusable = (labels[:, None] + rng.integers(1, classes, (images, 3))) % classes
    weights = rng.dirichlet(np.ones(3) * 0.7, images)
    answers = np.empty((n, images), dtype=np.int64)
    for u in range(n):
        target = rng.uniform(low, high)
        ability = np.log(target / (1 - target)) + 1.0  # about the target, given the spread
        right = rng.random(images) < 1 / (1 + np.exp(-(ability - difficulty)))
        pick = (rng.random(images)[:, None] > np.cumsum(weights, axis=1)).sum(axis=1)
        answers[u] = np.where(right, labels, confusable[np.arange(images), np.minimum(pick, 2)])
    return labels, answers


OPS = ("torch.relu", "torch.tanh", "torch.sigmoid", "torch.exp", "torch.abs", "torch.sqrt")
BINARY = ("+", "-", "*", "/")


def own_code(rng):
    """A helper of the student's own: a random chain of tensor operations, so that honest
    uploads differ beyond the corpus's few answers (students write more than two methods)."""
    lines = ["def helper(x, y):"]
    for _ in range(int(rng.integers(8, 16))):
        op, bi = OPS[rng.integers(len(OPS))], BINARY[rng.integers(len(BINARY))]
        lines.append(f"    x = {op}(x {bi} y) {bi} {int(rng.integers(1, 9))}")
        if rng.random() < 0.3:
            lines.append(f"    y = x.mean(dim={int(rng.integers(-2, 1))}, keepdim=True)")
    lines.append("    return x\n")
    return "\n".join(lines)


def rename(source, rng):
    """Local names changed at random (attributes keep theirs)."""
    out, previous, names = [], "", {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        text = tok.string
        if tok.type == tokenize.NAME and previous != "." and text in ("q", "k", "v", "x", "out"):
            text = names.setdefault(text, f"{text}_{rng.integers(1000)}")
        out.append((tok.type, text))
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            previous = tok.string
    return tokenize.untokenize(out)


def generate(folder, n, seed=0):
    """Write ``n`` uploads into ``folder``, the labels into ``folder/../labels`` and the
    starter into ``folder/../starter``; return the planted copy pairs."""
    from instructor.reference_data import corpus
    from instructor.release import build_release

    rng = np.random.default_rng(seed)
    work = folder.parent
    starter = build_release(work / "starter") and work / "starter"
    text = (starter / "transformer_utils.py").read_text()
    attention, norm = corpus("self_attention"), corpus("layer_norm")
    modules = {m: (starter / m).read_text() for m in SCRIPT_MODULES if (starter / m).is_file()}
    predictions = {}
    (work / "labels").mkdir()
    for name, (images, classes), (low, high) in (
        ("test_flower.txt", FLOWER, (0.80, 0.95)),
        ("test_pixmo.txt", PIXMO, (0.35, 0.60)),
    ):
        labels, answers = simulate(rng, n, images, classes, low, high)
        (work / "labels" / name).write_text("".join(f"{y}\n" for y in labels))
        predictions[name] = (answers, classes)
    planted = [(int(2 * i), int(n - 1 - 2 * i)) for i in range(COPIES)]
    for a, b in planted:
        for answers, classes in predictions.values():
            answers[b] = answers[a]
            lines = rng.choice(answers.shape[1], 20, replace=False)
            answers[b, lines] = (answers[b, lines] + 1) % classes
    sources = []
    for _ in range(n):
        bodies = {
            "self_attention": attention[rng.integers(len(attention))].body,
            "layer_norm": norm[rng.integers(len(norm))].body,
        }
        sources.append(rename(solution(text, bodies) + "\n\n" + own_code(rng), rng))
    for a, b in planted:
        sources[b] = rename(sources[a], rng)
    for u in range(n):
        up = folder / f"student{u:03d}"
        up.mkdir(parents=True)
        for name, (answers, _) in predictions.items():
            (up / name).write_text("".join(f"{p}\n" for p in answers[u]))
        (up / "transformer_utils.py").write_text(sources[u])
        embedded = {**modules, "transformer_utils.py": sources[u]}
        for script in ("script_q2.py", "script_q3.py"):
            body = "".join(f"\nSOURCES[{m!r}] = r'''{t}'''\n" for m, t in embedded.items())
            (up / script).write_text(f'"""{script}: the run\'s code."""\nSOURCES = {{}}\n{body}')
    return [(f"student{a:03d}", f"student{b:03d}") for a, b in planted]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uploads", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cores", help="pin the command to these CPUs, e.g. 0,1")
    parser.add_argument("--keep", help="generate into this (new) folder and keep it")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-similarity-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        planted = generate(work / "uploads", args.uploads)
        generated = time.monotonic() - t0
        command = [sys.executable, "-m", "autograder", "similarity", str(work / "uploads"),
                   "--labels", str(work / "labels"), "--starter", str(work / "starter"),
                   "--out", str(work / "report"), "--jobs", str(args.jobs)]  # fmt: skip
        if args.cores:
            command = ["taskset", "-c", args.cores, *command]
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        print(proc.stderr.strip())
        ranks = {}
        rows = (work / "report" / "similarity.csv").read_text().splitlines()[1:]
        for row in rows:
            file, rank, a, b = row.split(",")[:4]
            if (a, b) in planted:
                ranks.setdefault(file, []).append(int(rank))
        summary = {
            "uploads": args.uploads,
            "jobs": args.jobs,
            "cores": args.cores or f"all ({os.cpu_count()})",
            "load_average_1min": round(load, 2),
            "generation_s": round(generated, 1),
            "similarity_wall_s": round(wall, 1),
            "planted_copy_ranks": {f: sorted(r) for f, r in ranks.items()},
        }
        print(json.dumps(summary))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
