"""Copies that cannot hide: ``python -m autograder similarity`` ranks copied uploads first.

Predictions: 50 honest uploads are the test predictions of 50 small models trained on real
Fashion-MNIST (tests/integrity_models.py: softmax regressions on different subsets, at
different resolutions and step counts); two more are one other model's predictions with a
few lines changed each. Code: independent correct ``transformer_utils.py`` files are the
student starter with the corpus of correct answers (tests/variants/) in its exercise
regions; copies of one of them are renamed and reformatted.
"""

import ast
import csv
import io
import json
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import integrity_models as models
import numpy as np
import pytest

from autograder.__main__ import main
from autograder.fingerprints import file_fingerprints, normalised_tokens
from autograder.mistakes import (
    answer_matrix,
    compare_predictions,
    expected_shared,
    log10_poisson_sf,
    right_probabilities,
)
from benchmarks.bench_similarity import solution
from instructor.reference_data import corpus

ROOT = Path(__file__).resolve().parents[1]
CHANGES = 20  # lines changed in each copy: 1% of the 2,000 test images


# ---------------------------------------------------------------- the statistics
def test_poisson_tail_matches_direct_summation():
    s = np.array([0, 1, 3, 12, 40, 90, 140, 300])
    mu = np.array([2.0, 0.3, 3.0, 10.0, 20.0, 100.0, 60.0, 250.0])
    got = log10_poisson_sf(s, mu)
    for si, mi, g in zip(s, mu, got):
        direct = 1 - sum(np.exp(j * np.log(mi) - mi - np.sum(np.log(np.arange(1, j + 1))))
                         for j in range(si))  # fmt: skip
        if direct > 1e-12:
            assert g == pytest.approx(np.log10(direct), abs=1e-6)
        else:  # far in the tail: the leading term dominates
            lead = si * np.log(mi) - mi - np.sum(np.log(np.arange(1, si + 1)))
            assert lead / np.log(10) <= g <= lead / np.log(10) + 1
    assert log10_poisson_sf(np.array([3]), np.array([0.0]))[0] == -np.inf


def test_expected_shared_mistakes_equal_the_leave_pair_out_sum():
    """The matrix products give exactly what the module docstring's sum says, computed here
    image by image with the pair left out."""
    rng = np.random.default_rng(1)
    n, m, k = 6, 40, 5
    y = rng.integers(0, k, m)
    A = np.where(rng.random((n, m)) < 0.6, y, rng.integers(0, k, (n, m)))
    A[2, -3:] = -1  # a short file
    P = right_probabilities((A == y).astype(float))
    E, S = expected_shared(A, y, k, P)
    wrong = (A >= 0) & (A != y)
    counts = np.zeros((m, k))
    for u, i in zip(*np.nonzero(wrong)):
        counts[i, A[u, i]] += 1
    confusion = np.ones((k, k))
    for i in range(m):
        confusion[y[i]] += counts[i]
    np.fill_diagonal(confusion, 0)
    prior = confusion / confusion.sum(axis=1, keepdims=True)
    for u in range(n):
        for v in range(n):
            if u == v:
                continue
            total = 0.0
            for i in range(m):
                rest = counts[i].copy()
                for w in (u, v):
                    if wrong[w, i]:
                        rest[A[w, i]] -= 1
                r = (rest + prior[y[i]]) / (rest + prior[y[i]]).sum()
                cu = 0 if A[u, i] < 0 else 1 - P[u, i]
                cv = 0 if A[v, i] < 0 else 1 - P[v, i]
                total += cu * cv * (r**2).sum()
            assert E[u, v] == pytest.approx(total, rel=1e-9)
            assert S[u, v] == np.sum(wrong[u] & wrong[v] & (A[u] == A[v]))


def test_the_rasch_fit_keeps_each_uploads_accuracy():
    rng = np.random.default_rng(2)
    right = (rng.random((8, 300)) < np.linspace(0.5, 0.95, 8)[:, None]).astype(float)
    P = right_probabilities(right)
    assert np.allclose(P.sum(axis=1), right.sum(axis=1), atol=1e-6)


# ---------------------------------------------------------------- real small models
@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not models.available():
        pytest.skip(f"Fashion-MNIST is not in {models.FASHION}")
    out = tmp_path_factory.mktemp("fashion") / "models.npz"
    # one BLAS thread: on a shared machine many threads make 0.2 s models take seconds
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run([sys.executable, str(ROOT / "tests" / "integrity_models.py"), "50", "0",
                    str(out)], check=True, env=env, timeout=600)  # fmt: skip
    data = np.load(out)
    return data["labels"], list(data["honest"]), data["source"]


def _rank_of(result, a, b):
    n = result["S"].shape[0]
    iu, ju = np.triu_indices(n, 1)
    order = np.argsort(result["log10p"][iu, ju], kind="stable")
    pairs = list(zip(iu[order].tolist(), ju[order].tolist()))
    return pairs.index((min(a, b), max(a, b))) + 1


def test_honest_models_are_independent_and_of_varied_accuracy(fashion):
    labels, honest, _ = fashion
    accuracy = [float(np.mean(p == labels)) for p in honest]
    assert 0.55 < min(accuracy) and max(accuracy) < 0.9 and max(accuracy) - min(accuracy) > 0.05
    assert len({p.tobytes() for p in honest}) == len(honest)


def test_two_copies_of_one_model_rank_first_among_50_honest_uploads(fashion):
    labels, honest, source = fashion
    copies = models.copies_of(source, CHANGES, seed=5)
    uploads = honest + copies
    result = compare_predictions(answer_matrix(uploads, labels.size), labels, 10)
    assert _rank_of(result, 50, 51) == 1
    # the copies share more mistakes than the null expects by far more than any honest pair
    honest_best = -result["log10p"][:50, :50].min()
    assert -result["log10p"][50, 51] > honest_best


def test_a_copy_with_many_changes_is_no_longer_exceptional(fashion):
    """The measure responds to the evidence: rewrite 40% of the lines and the copies look
    like any two models (the test of ranking above could fail)."""
    labels, honest, source = fashion
    uploads = honest + models.copies_of(source, 800, seed=5)
    result = compare_predictions(answer_matrix(uploads, labels.size), labels, 10)
    assert _rank_of(result, 50, 51) > 10


def _write_uploads(folder, uploads, file="test_fashion.txt"):
    for i, preds in enumerate(uploads):
        (folder / f"student{i:02d}").mkdir(parents=True)
        (folder / f"student{i:02d}" / file).write_text("".join(f"{p}\n" for p in preds))


FASHION_ASSIGNMENT = """\
name: fashion
predictions:
  - file: test_fashion.txt
    points: 4
    threshold: "0.8"
    num_classes: 10
"""


def test_the_command_ranks_the_copies_first_in_csv_and_html(fashion, tmp_path, capsys):
    labels, honest, source = fashion
    uploads = honest[:25] + [models.copies_of(source, CHANGES, seed=5)[0]] + honest[25:]
    uploads.append(models.copies_of(source, CHANGES, seed=5)[1])
    _write_uploads(tmp_path / "uploads", uploads)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "test_fashion.txt").write_text("".join(f"{y}\n" for y in labels))
    (tmp_path / "uploads" / "student00" / "test_fashion.txt").write_text("0\nnot a class\n")
    (tmp_path / "a.yml").write_text(FASHION_ASSIGNMENT)
    out = tmp_path / "report"
    assert main(["similarity", str(tmp_path / "uploads"), "--labels", str(tmp_path / "labels"),
                 "--assignment", str(tmp_path / "a.yml"), "--out", str(out), "--csv-rows", "0",
                 "--files", "test_fashion.txt"]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(out / "similarity.csv")))
    assert {rows[0]["upload_a"], rows[0]["upload_b"]} == {"student25", "student51"}
    assert float(rows[0]["log10_p"]) < float(rows[1]["log10_p"]) and rows[0]["rank"] == "1"
    assert len(rows) == 51 * 50 // 2  # student00 left out, with its reason
    page = (out / "similarity.html").read_text()
    assert "student00: test_fashion.txt: line 2: &#x27;not a class&#x27;" in page
    assert page.index("student25") < page.index("student03")
    assert "most alike: student25 and student51" in capsys.readouterr().err


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "uploads" / "only").mkdir(parents=True)
    assert main(["similarity", str(tmp_path / "uploads"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "at least 2 are needed" in err
    assert main(["similarity", str(tmp_path / "nowhere")]) == 2
    assert "give the folder holding one sub-folder per upload" in capsys.readouterr().err


# ---------------------------------------------------------------- code
@pytest.fixture(scope="module")
def starter(tmp_path_factory):
    from instructor.release import build_release

    out = tmp_path_factory.mktemp("starter") / "release"
    build_release(out)
    return out


def independent_solutions(starter_text):
    """One upload per self_attention answer of the corpus, each with a layer_norm answer
    (there are fewer of those: the last two reuse the first two, as students do)."""
    attention, norm = corpus("self_attention"), corpus("layer_norm")
    return [
        solution(starter_text, {"self_attention": a.body, "layer_norm": norm[i % len(norm)].body})
        for i, a in enumerate(attention)
    ]


def rename(source, names):
    """``source`` with the local names of ``names`` replaced (what a copier does first; an
    attribute such as ``x.mean`` keeps its name, or the code would break)."""
    out, previous = [], ""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        text = tok.string
        if tok.type == tokenize.NAME and previous != ".":
            text = names.get(text, text)
        out.append((tok.type, text))
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            previous = tok.string
    return tokenize.untokenize(out)


def reformat(source):
    """``source`` laid out anew, as a formatter would (``ast.unparse``: other quotes,
    parentheses, line breaks, no comments), then commented by its new owner: a comment line
    after every third line, blank lines between statements."""
    out = []
    for i, line in enumerate(ast.unparse(ast.parse(source)).splitlines()):
        out.append(line)
        if i % 3 == 2 and line.strip():
            indent = line[: len(line) - len(line.lstrip())]
            out.extend([f"{indent}# this part is my own", ""])
    return "\n".join(out) + "\n"


def test_normalisation_ignores_names_comments_and_layout():
    a = "def f(x, y):\n    '''Doc.'''\n    z = x * y  # product\n    return torch.einsum('ij', z)\n"
    b = "def g(p,q):\n  r=p*q\n\n  return torch.einsum(\n      'ab',\n      r,\n  )\n"
    c = "def f(x, y):\n    z = x * y\n    return torch.matmul(z, z)\n"
    assert [t for t, _ in normalised_tokens(a)] == [t for t, _ in normalised_tokens(b)]
    assert [t for t, _ in normalised_tokens(a)] != [t for t, _ in normalised_tokens(c)]


def test_code_embedded_in_a_training_script_is_compared_as_code():
    module = "def f(x):\n    return x.mean(dim=-1) * 2\n" * 20
    script = f"SOURCES = {{}}\nSOURCES['m'] = r'''{module}'''\n"
    hashes, _, _ = file_fingerprints(script)
    inner, _, _ = file_fingerprints(module)
    assert set(inner.tolist()) <= set(hashes.tolist())


def test_renamed_and_reformatted_copies_rank_first(starter, tmp_path):
    text = (starter / "transformer_utils.py").read_text()
    honest = independent_solutions(text)
    names = {"q": "query_vectors", "k": "keys_", "v": "vals", "scores": "logits",
             "weights": "attn", "mean": "mu", "var": "sigma2", "x": "inp"}  # fmt: skip
    copies = [rename(honest[3], names), reformat(rename(honest[3], names))]
    assert all(c != honest[3] for c in copies)
    for copy in copies:
        compile(copy, "transformer_utils.py", "exec")  # disguised, still working code
    for i, src in enumerate(honest + copies):
        (tmp_path / "up" / f"s{i:02d}").mkdir(parents=True)
        (tmp_path / "up" / f"s{i:02d}" / "transformer_utils.py").write_text(src)
    out = tmp_path / "report"
    assert main(["similarity", str(tmp_path / "up"), "--starter", str(starter), "--files",
                 "transformer_utils.py", "--out", str(out), "--jobs", "1"]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(out / "similarity.csv")))
    copy_names = {"s03", f"s{len(honest):02d}", f"s{len(honest) + 1:02d}"}
    top3 = [{r["upload_a"], r["upload_b"]} for r in rows[:3]]
    assert all(pair <= copy_names for pair in top3), rows[:4]
    best_honest = max(
        float(r["score"]) for r in rows if not {r["upload_a"], r["upload_b"]} <= copy_names
    )
    assert float(rows[2]["score"]) > 1.5 * best_honest
    page = (out / "similarity.html").read_text()
    assert "<mark>" in page and "query_vectors" in page


def test_the_starter_is_left_out(starter, tmp_path):
    """Two uploads that only share the starter (both stubs untouched) share nothing."""
    text = (starter / "transformer_utils.py").read_text()
    for name in ("a", "b", "c"):
        (tmp_path / "up" / name).mkdir(parents=True)
        (tmp_path / "up" / name / "transformer_utils.py").write_text(text)
    out = tmp_path / "report"
    assert main(["similarity", str(tmp_path / "up"), "--starter", str(starter), "--files",
                 "transformer_utils.py", "--out", str(out)]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(out / "similarity.csv")))
    assert rows and all(r["shared_fingerprints"] == "0" for r in rows)


def test_the_benchmark_finds_its_planted_copies(capsys):
    """benchmarks/bench_similarity.py at a small size (its time is not checked here)."""
    from benchmarks import bench_similarity

    assert bench_similarity.main(["--uploads", "12", "--jobs", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["uploads"] == 12 and summary["similarity_wall_s"] > 0
    for file, ranks in summary["planted_copy_ranks"].items():
        assert ranks == [1, 2, 3], (file, ranks)


def test_hostile_uploads_are_left_out_or_compared_never_a_crash(starter, tmp_path):
    text = (starter / "transformer_utils.py").read_text()
    up = tmp_path / "up"
    cases = {
        "binary": b"\x00\xff\xfe" * 1000,
        "syntax_error": (text[:5000] + "\ndef broken(:\n    (((\n").encode(),
        "deep": b"x = " + b"(" * 5000 + b"1" + b")" * 5000 + b"\n",
        "huge_string": b"s = r'''" + b"def f(:\n" * 10_000 + b"'''\n",
        "plain": text.encode(),
    }
    for name, data in cases.items():
        (up / name).mkdir(parents=True)
        (up / name / "transformer_utils.py").write_bytes(data)
    (up / "link").mkdir()
    (up / "link" / "transformer_utils.py").symlink_to(up / "plain" / "transformer_utils.py")
    out = tmp_path / "report"
    assert main(["similarity", str(up), "--starter", str(starter), "--files",
                 "transformer_utils.py", "--out", str(out)]) == 0  # fmt: skip
    page = (out / "similarity.html").read_text()
    assert "link: transformer_utils.py: cannot open the file" in page
    rows = list(csv.DictReader(open(out / "similarity.csv")))
    assert {r["upload_a"] for r in rows} | {r["upload_b"] for r in rows} == set(cases)
