"""When the student's code raises: the student's line, and what probably caused it.

PyTorch raises on the student's behalf far from the slip: a forward that returns an output
of the wrong size fails only in ``backward`` ("Mismatch in shape: grad_output[0] ..."), in
torch's own frames, with no line of transformer_utils.py in the traceback. ``explain_crash``
turns such an exception into what a beginner can act on:

- the exception itself, shortened;
- the student's lines it came from (the traceback frames in transformer_utils.py, also
  those of the exception it was raised from, as a refused forbidden op); when no frame is
  the student's, the line of the student's code that produced what torch refused (the
  ``return`` of the forward or backward involved);
- what probably caused it, measured where possible: the expected and actual shapes, and for
  the convolution the output-size formula worked out with this case's numbers.

Only torch is imported: the sandbox carries this package.
"""

import inspect
import os
import re
import traceback

STUDENT_FILE = "transformer_utils.py"


def _chain(error):
    """The exception and those it was raised from or during (newest first)."""
    seen = []
    while error is not None and len(seen) < 5 and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def student_frames(error, student_file=STUDENT_FILE):
    """Frames of the student's file in the exception's traceback, or in the traceback of
    the exception it came from (a forbidden op is re-raised by the harness's check)."""
    for e in _chain(error):
        frames = [
            f
            for f in traceback.extract_tb(e.__traceback__)
            if os.path.basename(f.filename) == student_file
        ]
        if frames:
            return frames
    return []


def _frame_line(lineno, name, line, note=""):
    return f"  at {STUDENT_FILE}:{lineno} in {name}:  {(line or '').strip()}{note}"


def return_line(function):
    """(line number, text) of the last ``return`` in a function of the student's file."""
    try:
        function = inspect.unwrap(function)
        if os.path.basename(inspect.getsourcefile(function) or "") != STUDENT_FILE:
            return None
        lines, start = inspect.getsourcelines(function)
    except (TypeError, OSError):
        return None
    found = None
    for offset, text in enumerate(lines):
        if re.match(r"\s*return\b", text):
            found = (start + offset, text.strip())
    return found


def _size(text):
    return tuple(int(v) for v in re.findall(r"-?\d+", text))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv_size_causes(case_input, expected, got):
    """Explain a convolution output of the wrong size with the formula and this case's numbers."""
    x, w = case_input["x"], case_input["weight"]
    stride, padding = _pair(case_input["stride"]), _pair(case_input["padding"])
    lines = []
    for axis, name in ((2, "H"), (3, "W")):
        if len(got) != 4 or got[axis] == expected[axis]:
            continue
        size, k = x.shape[axis], w.shape[axis]
        s, p = stride[axis - 2], padding[axis - 2]
        right = (size + 2 * p - k) // s + 1
        line = (
            f"{name}_out = ({name} + 2 * padding - k) // stride + 1 = ({size} + 2 * {p} - {k}) "
            f"// {s} + 1 = {right}, yours is {got[axis]}"
        )
        if p and got[axis] == (size - k) // s + 1:
            line += ": that is the size without the padding (check padding in the size formula and in F.unfold)"
        elif s > 1 and got[axis] == size + 2 * p - k + 1:
            line += ": that is the size with stride 1 (check stride in the size formula and in F.unfold)"
        lines.append(line)
    return lines


def _conv_columns_causes(case_input, numel):
    """An unfold with the wrong stride or padding gives the wrong number of columns L."""
    x, w = case_input["x"], case_input["weight"]
    (sh, sw), (ph, pw) = _pair(case_input["stride"]), _pair(case_input["padding"])
    B, C_out, (H, W), (kh, kw) = x.shape[0], w.shape[0], x.shape[2:], w.shape[2:]
    if numel % (B * C_out):
        return []
    columns = numel // (B * C_out)
    right = ((H + 2 * ph - kh) // sh + 1) * ((W + 2 * pw - kw) // sw + 1)
    line = f"your product has {columns} columns per image and channel; H_out * W_out = {right}"
    if columns == ((H + 2 * ph - kh) + 1) * ((W + 2 * pw - kw) + 1) and (sh, sw) != (1, 1):
        line += ": that is the count with stride 1 (pass stride= to F.unfold)"
    elif columns == ((H - kh) // sh + 1) * ((W - kw) // sw + 1) and (ph, pw) != (0, 0):
        line += ": that is the count without padding (pass padding= to F.unfold)"
    return [line]


# (exercise, kind of failure) -> the student's function whose return line is shown when the
# traceback has no frame of the student's file.
_RESPONSIBLE = {
    ("conv2d", "output"): ("Conv2dFunction", "forward"),
    ("conv2d", "gradient"): ("Conv2dFunction", "backward"),
}
_CONV_GRADIENTS = ("grad_x (the shape of x)", "grad_weight (the shape of weight)",
                   "grad_bias (the shape of bias)", "stride (None)", "padding (None)")  # fmt: skip


def probable_causes(exercise_id, error, case_input=None, expected=None):
    """(kind, lines): what probably caused ``error``, measured where possible. ``kind``
    ("output", "gradient" or None) says which student function is responsible."""
    text = str(error)
    name = type(error).__name__
    if name == "ForbiddenOpError":
        return None, ["the line below calls torch's own version of what this exercise builds"]
    m = re.search(
        r"Mismatch in shape: grad_output\[0\] has a shape of torch.Size\(\[(.*?)\]\) and "
        r"output\[0\] has a shape of torch.Size\(\[(.*?)\]\)",
        text,
    )
    if m:
        needed, got = _size(m.group(1)), _size(m.group(2))
        lines = [
            f"your forward returned an output of shape {got}, but this case needs {needed} "
            "(the test back-propagates a gradient of that shape)"
        ]
        if exercise_id == "conv2d" and case_input is not None:
            lines += _conv_size_causes(case_input, needed, got)
        return "output", lines
    m = re.search(
        r"returned an invalid gradient at index (\d+) - got \[(.*?)\] but expected shape "
        r"compatible with \[(.*?)\]",
        text,
    )
    if m:
        index, got, needed = int(m.group(1)), _size(m.group(2)), _size(m.group(3))
        what = (
            _CONV_GRADIENTS[index] if exercise_id == "conv2d" and index < 5 else f"gradient {index}"
        )
        return "gradient", [
            f"backward returned {what} with shape {got}; it must be {needed}: each gradient "
            "has the shape of its input (check the transposes and reshapes of the backward pass)"
        ]
    m = re.search(r"returned an incorrect number of gradients \(expected (\d+), got (\d+)\)", text)
    if m:
        return "gradient", [
            f"backward must return one value per input of forward ({m.group(1)}; None for "
            f"stride and padding), yours returns {m.group(2)}"
        ]
    m = re.search(
        r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)", text
    )
    if m:
        return None, [
            f"a matrix product (A @ B) needs A's last size to equal B's first: here {m.group(2)} "
            f"vs {m.group(3)}; one factor probably needs a transpose (.t(), .transpose(-2, -1)) "
            "or another reshape"
        ]
    m = re.search(
        r"Expected size for first two dimensions of batch2 tensor to be: \[(.*?)\] but got: "
        r"\[(.*?)\]",
        text,
    )
    if m:
        return None, [
            f"a batched matrix product (A @ B) needs B's first sizes to be ({m.group(1)}), they "
            f"are ({m.group(2)}): A's last size must equal B's size before last; one factor "
            "probably needs a transpose (.transpose(-2, -1)) or another reshape"
        ]
    m = re.search(
        r"The size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at "
        r"non-singleton dimension (\d+)",
        text,
    )
    if m:
        return None, [
            f"two tensors of different sizes ({m.group(1)} vs {m.group(2)} in dim {m.group(3)}) "
            "were combined elementwise: compare their shapes with the docstring (keepdim=True "
            "on a reduction, a mask of another rank, heads split or merged)"
        ]
    m = re.search(r"shape '\[(.*?)\]' is invalid for input of size (\d+)", text)
    if m:
        wanted = _size(m.group(1))
        count = 1
        for v in wanted:
            count *= v if v > 0 else 1
        lines = [
            f"reshape/view to {wanted} needs {count} elements (if no -1), the tensor has "
            f"{m.group(2)}: check the sizes you computed (H // p, num_heads * head_dim, H_out)"
        ]
        if exercise_id == "conv2d" and case_input is not None:
            lines += _conv_columns_causes(case_input, int(m.group(2)))
        return None, lines
    m = re.search(
        r"Given output_size=.*?padding=\((\d+), (\d+)\), stride=\((\d+), (\d+)\), expected size "
        r"of input's dimension 2 to match the calculated number of sliding blocks .*?= (\d+), "
        r"but got input.size\(2\)=(\d+)",
        text,
    )
    if m:
        padding, stride = _size(m.group(1) + " " + m.group(2)), _size(m.group(3) + " " + m.group(4))
        lines = [
            f"F.fold with these arguments expects {m.group(5)} columns, yours has {m.group(6)} (the "
            "L of F.unfold): fold with the same kernel size, stride and padding as the unfold"
        ]
        if exercise_id == "conv2d" and case_input is not None:
            if padding != _pair(case_input["padding"]):
                lines.append(
                    f"you fold with padding={padding}; this case has padding={case_input['padding']}"
                )
            if stride != _pair(case_input["stride"]):
                lines.append(
                    f"you fold with stride={stride}; this case has stride={case_input['stride']}"
                )
        return None, lines
    if "view size is not compatible with input tensor's size and stride" in text:
        return None, ["after a transpose/permute use .reshape (or .contiguous().view)"]
    if re.search(r"expected scalar type|same dtype|dtype", text) and re.search(
        r"Float|Double|Long|Half|float|double|long", text
    ):
        met = re.findall(r"\b(Double|Float|Long|Half|Int|BFloat16|Bool)\b", text)
        which = f" ({' and '.join(dict.fromkeys(met))})" if len(set(met)) > 1 else ""
        return None, [
            f"two dtypes met{which}: keep every tensor in the inputs' dtype (float32): no "
            ".double(), and create new tensors (torch.zeros, torch.arange, torch.tensor) with "
            "dtype=x.dtype, or .to(x)"
        ]
    if "Expected all tensors to be on the same device" in text:
        return None, ["create new tensors with device=x.device (or .to(x))"]
    if "modified by an inplace operation" in text:
        return None, [
            "an in-place operation (+=, masked_fill_, x[...] = ...) changed a tensor autograd "
            "still needs: use the out-of-place form (x = x + ..., masked_fill)"
        ]
    if "does not require grad and does not have a grad_fn" in text:
        return None, [
            "your output is cut off from autograd (.detach(), .data, torch.no_grad() or numpy)"
        ]
    m = re.search(r"Dimension out of range \(expected to be in range of \[(-?\d+), (\d+)\]", text)
    if m:
        return None, [
            f"this tensor has {int(m.group(2)) + 1} dims (valid dim indices {m.group(1)}..{m.group(2)}): "
            "check its shape against the docstring"
        ]
    return None, []


def explain_crash(exercise_id, error, case_input=None, expected=None, tu=None):
    """The exception, the student's line(s) and the probable cause, for a test message.

    For example::

        RuntimeError: Mismatch in shape: grad_output[0] has a shape of ...
        Probable cause: your forward returned an output of shape (2, 3, 3, 4), but ...
          at transformer_utils.py:641 in forward:  return out.reshape(B, C_out, H_out, W_out)
          (torch raised later, on the output this line returned)
    """
    text = f"{type(error).__name__}: {error}".strip()
    if len(text) > 1500:
        text = text[:1500] + " ..."
    kind, causes = probable_causes(exercise_id, error, case_input, expected)
    lines = [text]
    if causes:  # before the location: the student's line stays the message's last line
        lines.append("Probable cause: " + causes[0])
        lines += [f"  {c}" for c in causes[1:]]
    frames = student_frames(error)
    if frames:
        lines += [_frame_line(f.lineno, f.name, f.line) for f in frames[-3:]]  # failing line last
    else:
        owner = _RESPONSIBLE.get((exercise_id, kind))
        found = None
        if owner and tu is not None:
            found = return_line(getattr(getattr(tu, owner[0], None), owner[1], None))
        if found:
            what = "output" if kind == "output" else "gradients"
            lines.append(_frame_line(found[0], owner[1], found[1]))
            lines.append(f"  (torch raised later, on the {what} this line returned)")
        else:
            lines.append(f"  (not raised inside {STUDENT_FILE}; check what your code returns)")
    return "\n".join(lines)
