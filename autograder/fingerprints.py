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
import itertools
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


def _string_value(text):
    """The value of a long string literal that spans lines, or None."""
    if len(text) < EMBEDDED_MIN:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, str) and "\n" in value else None


def _is_python(text):
    try:
        ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def _key(text):
    return zlib.crc32(text.encode("utf-8", "surrogatepass")), len(text)


def _pieces(source, depth, known):
    """Yield ``(token, line)``, or ``(None, (code, line))`` for a long string that holds
    Python (``known(code)`` says it was seen before, so it need not be parsed again)."""
    raw = _raw_tokens(source)
    previous = None  # type of the previous significant token
    previous_text = ""
    fstring = 0
    drop_newline = False
    comma = None  # a comma waits: before a closing bracket it is layout (black adds them)
    for n, tok in enumerate(raw):
        kind, text, line = tok.type, tok.string, tok.start[0]
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
                    kind, text = tokenize.STRING, "S"
                    if comma:
                        yield comma
                        comma = None
                    yield text, line
                    previous, previous_text = kind, text
            continue
        if kind == tokenize.STRING:
            following = next(
                (t.type for t in itertools.islice(raw, n + 1, None) if t.type not in _SKIP), None
            )
            if previous in _STATEMENT_START and following in (tokenize.NEWLINE, None):
                drop_newline = True  # a docstring, or a string used as a comment
                continue
            value = _string_value(text) if depth == 0 else None
            text = "S"
            if value is not None and (known(value) or _is_python(value)):
                if comma:
                    yield comma
                    comma = None
                yield "S", line
                yield None, (value, line)
                previous, previous_text = kind, text
                continue
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
        if comma:
            if not (kind == tokenize.OP and text in _CLOSING):
                yield comma
            comma = None
        if kind == tokenize.OP and text == ",":
            comma = (text, line)
        else:
            yield text, line
        previous, previous_text = kind, text
    if comma:
        yield comma


def normalised_tokens(source, depth=0):
    """``[(token, line)]``: the code's tokens, normalised (module docstring)."""
    out = []
    for token, line in _pieces(source, depth, lambda code: False):
        if token is None:
            code, start = line
            out.extend((t, ln + start - 1) for t, ln in normalised_tokens(code, depth + 1))
        else:
            out.append((token, line))
    return out


def normalised_ids(source, cache=None, depth=0):
    """``(ids, lines)``: :func:`normalised_tokens` as arrays of token ids and line numbers.
    ``cache`` (a dict) keeps them for every text seen: a class's training scripts embed the
    same kit modules, and each the upload's own transformer_utils.py."""
    key = _key(source)
    if cache is not None and key in cache:
        return cache[key]
    parts, tokens, lines = [], [], []
    known = (lambda code: _key(code) in cache) if cache is not None else (lambda code: False)
    for token, line in _pieces(source, depth, known):
        if token is None:
            code, start = line
            parts.append((np.array([_token_id(t) for t in tokens], dtype=np.uint64),
                          np.array(lines, dtype=np.int64)))  # fmt: skip
            tokens, lines = [], []
            ids, inner = normalised_ids(code, cache, depth + 1)
            parts.append((ids, inner + start - 1))
        else:
            tokens.append(token)
            lines.append(line)
    parts.append((np.array([_token_id(t) for t in tokens], dtype=np.uint64),
                  np.array(lines, dtype=np.int64)))  # fmt: skip
    result = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if cache is not None:
        cache[key] = result
    return result


_IDS = {}


def _token_id(text):
    value = _IDS.get(text)
    if value is None:
        value = _IDS[text] = zlib.crc32(text.encode("utf-8", "surrogatepass")) + 1
    return value


def fingerprints(ids, k=K, w=W):
    """``(hashes, positions)``: the winnowed k-gram hashes of the token ``ids`` and the index
    of the first token of each (unsigned 64-bit; empty arrays when there are fewer than k)."""
    ids = np.asarray(ids, dtype=np.uint64)
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
    ids, lines = normalised_ids(source, cache)
    hashes, pick = fingerprints(ids)
    if not pick.size:
        return hashes, pick, pick
    return hashes, lines[pick], lines[np.minimum(pick + K - 1, lines.size - 1)]
