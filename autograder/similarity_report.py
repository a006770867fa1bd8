"""The HTML page of ``python -m autograder similarity``: the top pairs of each file side by
side. Everything shown from an upload is student text: escaped, never interpreted."""

import html

import numpy as np

from .fingerprints import K

CONTEXT = 2  # lines shown around each matched region of code
MAX_ROWS = 200  # shared mistakes listed per pair
STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 2px 6px; font-size: 90%; text-align: right; }
th { background: #f3f3f3; }
.pair { display: flex; gap: 1em; }
.pair > div { flex: 1; min-width: 0; }
pre { background: #fafafa; border: 1px solid #ddd; padding: 4px; overflow-x: auto;
      font-size: 80%; }
mark { background: #ffe28a; }
.gap { color: #999; }
"""


def _e(text):
    return html.escape(str(text), quote=True)


def _pairs_table(res, pairs):
    keys = list(res.columns)
    head = "".join(f"<th>{_e(k)}</th>" for k in ["rank", "upload a", "upload b", "score", *keys])
    rows = []
    for rank, (a, b) in enumerate(pairs, start=1):
        cells = [rank, res.names[a], res.names[b], f"{res.score[a, b]:.4g}"]
        for k in keys:
            v = res.columns[k]
            cells.append(f"{v[a]:.4g} / {v[b]:.4g}" if v.ndim == 1 else f"{float(v[a, b]):.4g}")
        link = f'<a href="#{_e(res.file)}-{rank}">{rank}</a>'
        rows.append(
            "<tr>" + f"<td>{link}</td>" + "".join(f"<td>{_e(c)}</td>" for c in cells[1:]) + "</tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _mistakes(res, a, b):
    A, y = res.detail["answers"], res.detail["labels"]
    same = np.nonzero((A[a] == A[b]) & (A[a] >= 0) & (A[a] != y))[0]
    differ = int(np.sum(A[a] != A[b]))
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{y[i]}</td><td>{A[a, i]}</td></tr>" for i in same[:MAX_ROWS]
    )
    more = f"<p>... and {same.size - MAX_ROWS} more</p>" if same.size > MAX_ROWS else ""
    return (
        f"<p>{same.size} images wrong in both with the same class; the two files differ on "
        f"{differ} of {y.size} lines.</p><table><tr><th>line</th><th>true class</th>"
        f"<th>both answered</th></tr>{rows}</table>{more}"
    )


def _matched_lines(res, u, other):
    """Lines of upload ``u`` covered by fingerprints it shares with ``other``."""
    hashes, first, last = res.detail["prints"][u]
    theirs = set(res.detail["prints"][other][0].tolist()) & res.detail["kept"]
    lines = set()
    for h, f, la in zip(hashes.tolist(), first.tolist(), last.tolist()):
        if h in theirs:
            lines.update(range(f, la + 1))
    return lines


def _code(res, u, other):
    text = res.detail["texts"][u].splitlines()
    marked = _matched_lines(res, u, other)
    show = {i for m in marked for i in range(m - CONTEXT, m + CONTEXT + 1) if 1 <= i <= len(text)}
    out, last = [], 0
    for i in sorted(show):
        if i != last + 1:
            out.append('<span class="gap">   ...</span>')
        line = f"{i:5d}  {_e(text[i - 1])}"
        out.append(f"<mark>{line}</mark>" if i in marked else line)
        last = i
    if not out:
        out.append('<span class="gap">(no shared fingerprints)</span>')
    return "<pre>" + "\n".join(out) + "</pre>"


def render_html(results, top, uploads):
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Similarity of uploads</title>",
        f"<style>{STYLE}</style></head><body><h1>Similarity of {uploads} uploads</h1>",
        "<p>Pairs ordered by how unlikely their likeness is for independent work. A high "
        "rank is a reason to read the pair, not a finding: read both, then talk to the "
        "students. Prediction files: <b>score</b> = -log10 of the p-value of the shared "
        "same-class mistakes under independence (see README); code: shared fingerprints "
        f"over the smaller file's count (+10), after the starter code and code common to "
        f"many uploads are left out (k-grams of {K} normalised tokens).</p>",
    ]
    for res in results:
        parts.append(f"<h2>{_e(res.file)} ({_e(res.kind)}, {len(res.names)} uploads)</h2>")
        if res.note:
            parts.append(f"<p>{_e(res.note)}</p>")
        if res.skipped:
            items = "".join(
                f"<li>{_e(name)}: {_e(why)}</li>" for name, why in sorted(res.skipped.items())
            )
            parts.append(
                f"<details><summary>{len(res.skipped)} left out</summary><ul>{items}</ul></details>"
            )
        if len(res.names) < 2 or not res.columns:
            continue
        pairs = res.ranked(top)
        parts.append(_pairs_table(res, pairs))
        for rank, (a, b) in enumerate(pairs, start=1):
            parts.append(
                f"<h3 id='{_e(res.file)}-{rank}'>{rank}. {_e(res.names[a])} and "
                f"{_e(res.names[b])}</h3>"
            )
            if res.kind == "predictions":
                parts.append(_mistakes(res, a, b))
            else:
                parts.append(
                    f"<div class='pair'><div><b>{_e(res.names[a])}</b>{_code(res, a, b)}</div>"
                    f"<div><b>{_e(res.names[b])}</b>{_code(res, b, a)}</div></div>"
                )
    parts.append("</body></html>")
    return "\n".join(parts)
