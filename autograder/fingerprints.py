"""Code compared by its structure: tokens with names, literals, comments and layout gone,
then winnowed fingerprints (Schleimer, Wilkerson and Aiken, SIGMOD 2003, as in MOSS).

Renaming variables, rewording comments and strings, reformatting (line breaks, indentation
width, trailing commas, blank lines, docstrings) change nothing here: a local name becomes
``N``, a string ``S``, a number ``0``; comments, blank lines and docstrings are dropped. What
stays is the shape of the code and the library it calls (an attribute name after ``.``, a
keyword or a builtin is kept: ``torch.einsum`` and ``torch.matmul`` are different
answers). A long string that holds Python (``python -m kit.upload`` embeds every module of
a training run in ``script_qN.py`` that way) is compared as the code it holds.

Every ``K`` consecutive tokens are hashed; of each window of ``W`` consecutive hashes the
smallest is kept, so any match of at least ``K + W - 1`` tokens (about three lines) is
found, whatever else surrounds it.
"""

import ast
import builtins
import io
import keyword
import tokenize
import zlib

import numpy as np

K = 15  # tokens per hashed k-gram (about two lines of code)
W = 8  # hashes per winnowing window
EMBEDDED_MIN = 400  # characters: a shorter string is a string, not embedded code
_KEEP = set(keyword.kwlist) | set(dir(builtins)) | {"self", "cls"}
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
_CLOSING = {")", "]", "}"}
_STATEMENT_START = {None, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
FSTRING_START = getattr(tokenize, "FSTRING_START", -1)  # Python 3.12 splits f-strings
FSTRING_END = getattr(tokenize, "FSTRING_END", -2)


def _raw_tokens(source):
    """The tokenizer's tokens, up to the first error (a file that does not parse is still
    compared, up to where it stops making sense)."""
    tokens = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            tokens.append(tok)
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass
    return tokens


def _embedded(text):
    """The Python held in a long string literal, or None."""
    if len(text) < EMBEDDED_MIN:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, str) or "\n" not in value:
        return None
    try:
        ast.parse(value)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    return value


def normalised_tokens(source, line_offset=0, depth=0, cache=None):
    """``[(token, line)]``: the code's tokens, normalised (module docstring)."""
    out = []
    raw = _raw_tokens(source)
    previous = None  # type of the previous significant token
    previous_text = ""
    fstring = 0
    drop_newline = False
    for n, tok in enumerate(raw):
        kind, text, line = tok.type, tok.string, tok.start[0] + line_offset
        if kind in _SKIP:
            continue
        if drop_newline:
            drop_newline = False
            if kind == tokenize.NEWLINE:
                continue
        if kind == FSTRING_START:
            fstring += 1
            continue
        if fstring:
            if kind == FSTRING_END:
                fstring -= 1
                if not fstring:
                    out.append(("S", line))
                    previous, previous_text = tokenize.STRING, "S"
            continue
        if kind == tokenize.STRING:
            following = next((t.type for t in raw[n + 1 :] if t.type not in _SKIP), None)
            if previous in _STATEMENT_START and following in (tokenize.NEWLINE, None):
                drop_newline = True  # a docstring, or a string used as a comment
                continue
            code = _embedded(text) if depth == 0 else None
            if code is not None:
                key = zlib.crc32(code.encode("utf-8", "surrogatepass"))
                inner = cache.get(key) if cache is not None else None
                if inner is None:
                    inner = normalised_tokens(code, 0, depth + 1)
                    if cache is not None:
                        cache[key] = inner
                out.append(("S", line))
                out.extend((t, ln + line - 1) for t, ln in inner)
                previous, previous_text = tokenize.STRING, "S"
                continue
            text = "S"
        elif kind == tokenize.NUMBER:
            text = "0"
        elif kind == tokenize.NAME:
            if text not in _KEEP and previous_text != ".":
                text = "N"
        elif kind == tokenize.NEWLINE:
            text = ";"
        elif kind == tokenize.INDENT:
            text = "{"
        elif kind == tokenize.DEDENT:
            text = "}"
        elif kind == tokenize.OP and text in _CLOSING and out and out[-1][0] == ",":
            out.pop()  # a trailing comma is layout (black adds them)
        out.append((text, line))
        previous, previous_text = kind, text
    return out


_IDS = {}


def _token_id(text):
    value = _IDS.get(text)
    if value is None:
        value = _IDS[text] = zlib.crc32(text.encode("utf-8", "surrogatepass")) + 1
    return value


def fingerprints(tokens, k=K, w=W):
    """``(hashes, positions)``: the winnowed k-gram hashes of ``tokens`` and the index of the
    first token of each (unsigned 64-bit; empty arrays when there are fewer than k)."""
    ids = np.fromiter((_token_id(t) for t, _ in tokens), dtype=np.uint64, count=len(tokens))
    if ids.size < k:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    base = np.uint64(1_000_003)
    powers = base ** np.arange(k - 1, -1, -1, dtype=np.uint64)  # wraps mod 2^64: on purpose
    with np.errstate(over="ignore"):
        grams = np.lib.stride_tricks.sliding_window_view(ids, k)
        hashes = (grams * powers).sum(axis=1, dtype=np.uint64)
    if hashes.size <= w:
        pick = np.array([int(np.argmin(hashes))])
    else:
        windows = np.lib.stride_tricks.sliding_window_view(hashes, w)
        # the rightmost minimum of each window, as winnowing prescribes
        pick = np.arange(windows.shape[0]) + (w - 1 - np.argmin(windows[:, ::-1], axis=1))
        pick = np.unique(pick)
    return hashes[pick], pick


def file_fingerprints(source, cache=None):
    """``(hashes, first_line, last_line)`` of one file: each fingerprint's lines."""
    tokens = normalised_tokens(source, cache=cache)
    hashes, pick = fingerprints(tokens)
    lines = np.array([ln for _, ln in tokens], dtype=np.int64)
    if not pick.size:
        return hashes, pick, pick
    return hashes, lines[pick], lines[np.minimum(pick + K - 1, lines.size - 1)]
