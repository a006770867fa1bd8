"""The kit's parts (``instructor/parts.yml``) and what an assignment's pick of them ships.

- ``load_parts``: the registry: what always ships, what never does, and each part's files,
  kit packages, config.yml sections, README blocks and sections of other files.
- ``select``: the parts an assignment picks, and from them ``shipped_files`` (every file of
  the release, kit packages of other parts left out), the README blocks and file sections to
  drop, and ``filter_config`` (config.yml with the course's sections and presets only).
- ``check_listing``: every tracked top-level entry of the repository is accounted for.
"""

import fnmatch
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from instructor.markers import ReleaseError

PARTS_FILE = Path(__file__).resolve().parent / "parts.yml"
PART_KEYS = (
    "title",
    "files",
    "kit",
    "config",
    "readme",
    "sections",
    "quick_start",
    "quick_start_says",
)


@dataclass
class Part:
    name: str
    title: str = ""
    files: list = field(default_factory=list)
    kit: list = field(default_factory=list)
    config: list = field(default_factory=list)
    readme: list = field(default_factory=list)
    sections: dict = field(default_factory=dict)  # file -> names of its "# BEGIN x section"s
    quick_start: str = ""  # the command README's Quick start runs when this part ships first
    quick_start_says: str = ""  # what that command does, in a sentence or two


@dataclass
class Registry:
    always: list
    never: list
    parts: dict  # name -> Part, in the file's order


def load_parts(path=PARTS_FILE):
    """Read and check instructor/parts.yml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ReleaseError(f"{path}: cannot read the parts of the kit ({exc})") from None
    parts = {}
    for name, spec in (raw.get("parts") or {}).items():
        unknown = sorted(set(spec or {}) - set(PART_KEYS))
        if unknown:
            raise ReleaseError(f"{path}: part {name}: unknown key(s) {', '.join(unknown)}")
        parts[name] = Part(name, **(spec or {}))
    return Registry(list(raw.get("always") or []), list(raw.get("never") or []), parts)


@dataclass
class Selection:
    """What one assignment's parts ship."""

    registry: Registry
    picked: list  # Parts, in the assignment's order

    @property
    def entries(self):
        """Top-level files and folders that ship."""
        names = list(self.registry.always)
        for part in self.picked:
            names += [f for f in part.files if f not in names]
        return names

    def _dropped(self, attribute):
        kept = {x for part in self.picked for x in getattr(part, attribute)}
        return sorted(
            {x for part in self.registry.parts.values() for x in getattr(part, attribute)} - kept
        )

    @property
    def dropped_kit(self):
        """Paths inside kit/ that only parts of other courses use."""
        return self._dropped("kit")

    @property
    def kept_kit(self):
        """Paths inside kit/ that the picked parts list (they ship even inside a dropped
        package: captioning reads Fashion-MNIST with Question 4's reader)."""
        return sorted({x for part in self.picked for x in part.kit})

    @property
    def dropped_readme_blocks(self):
        return self._dropped("readme")

    @property
    def config_sections(self):
        return [s for part in self.picked for s in part.config]

    @property
    def dropped_config_sections(self):
        return self._dropped("config")

    def dropped_sections(self, filename):
        """Names of the ``# BEGIN name section`` blocks of ``filename`` that do not ship."""
        kept = {s for part in self.picked for s in part.sections.get(filename, [])}
        every = {
            s for part in self.registry.parts.values() for s in part.sections.get(filename, [])
        }
        return sorted(every - kept)


def select(assignment, registry):
    """The parts ``assignment`` picks (all of them when it names none)."""
    names = assignment.parts or list(registry.parts)
    unknown = [n for n in names if n not in registry.parts]
    if unknown:
        raise ReleaseError(
            f"{assignment.path}: unknown part(s) {', '.join(unknown)}; the parts of "
            f"{PARTS_FILE.name}: {', '.join(registry.parts)}"
        )
    return Selection(registry, [registry.parts[n] for n in names])


def shipped_files(root, selection):
    """Every file the release ships, as sorted relative POSIX paths: the listed files that
    exist and every file inside the listed folders (caches, hidden files and the kit paths of
    parts not picked left out, unless a picked part lists them too)."""
    root = Path(root)
    dropped = [Path(p) for p in selection.dropped_kit]
    kept = [Path(p) for p in selection.kept_kit]
    names = set()
    for entry in selection.entries:
        path = root / entry
        if path.is_file():
            names.add(entry)
        elif path.is_dir():
            for f in path.rglob("*"):
                rel = f.relative_to(root)
                hidden = any(p.startswith(".") or p == "__pycache__" for p in rel.parts)
                other = any(rel == d or d in rel.parents for d in dropped) and not any(
                    rel == k or k in rel.parents for k in kept
                )
                if f.is_file() and not hidden and not other and f.suffix != ".pyc":
                    names.add(rel.as_posix())
    return sorted(names)


def tracked_top_level(root):
    """Top-level entries tracked by git (files and folders), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted({p.split("/", 1)[0] for p in out.stdout.decode().split("\0") if p})


def check_listing(root, registry):
    """Tracked top-level entries that are neither in ``always``, ``never`` nor a part."""
    tracked = tracked_top_level(root)
    if tracked is None:
        return []
    listed = set(registry.always) | set(registry.never)
    listed |= {f for part in registry.parts.values() for f in part.files}
    return [name for name in tracked if name not in listed]


def drop_sections(text, names, filename):
    """``text`` without its ``# BEGIN <name> section`` ... ``# END <name> section`` blocks for
    each of ``names`` (both marker lines included)."""
    for name in names:
        block = re.compile(
            rf"^[ \t]*# BEGIN {name} section\n.*?^[ \t]*# END {name} section\n", re.M | re.S
        )
        if not block.search(text):
            raise ReleaseError(f"{filename}: no '# BEGIN {name} section' ... '# END' block to drop")
        text = block.sub("", text)
    return text


# ---------------------------------------------------------------------- config.yml

_TOP_KEY = re.compile(r"^([A-Za-z_][\w-]*):")
_PRESET_KEY = re.compile(r"^  ([A-Za-z_][\w-]*):")
_ALIAS = re.compile(r"\*([A-Za-z_][\w-]*)")
_ANCHOR = re.compile(r"&([A-Za-z_][\w-]*)")


def _blocks(lines, key_re, indent):
    """Split ``lines`` into ``[(key or None, lines)]``: a key's block starts with the comment
    lines right above it (at ``indent``) and runs to the next key's block."""
    blocks, current = [], [None, []]
    for line in lines:
        m = key_re.match(line)
        if m:
            # comment lines right above the key belong to it
            head = current[1]
            k = len(head)
            while k and head[k - 1].startswith(indent + "#"):
                k -= 1
            comments = head[k:]
            del head[k:]
            blocks.append(tuple(current))
            current = [m.group(1), comments + [line]]
        else:
            current[1].append(line)
    blocks.append(tuple(current))
    return [(key, body) for key, body in blocks if key is not None or body]


def _code(lines):
    """The lines without their comments (anchors and aliases in comments do not count)."""
    return "\n".join(line.split("#", 1)[0] for line in lines)


def _filter_presets(section_lines, patterns, where):
    """The lines of one section keeping the presets that match ``patterns`` and every preset
    whose anchor they use (``<<: *name``)."""
    header, *presets = _blocks(section_lines, _PRESET_KEY, "  ")
    if header[0] is not None:  # the section's own key line was split off above
        presets.insert(0, header)
        header = (None, [])
    by_name = {key: body for key, body in presets if key is not None}
    anchors = {}
    for key, body in by_name.items():
        for anchor in _ANCHOR.findall(_code(body)):
            anchors[anchor] = key
    keep = {k for k in by_name if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
    if not keep:
        raise ReleaseError(f"{where}: no preset matches {', '.join(patterns)}")
    todo = list(keep)
    while todo:  # the presets they build on come along
        for alias in _ALIAS.findall(_code(by_name[todo.pop()])):
            if alias not in anchors:
                raise ReleaseError(f"{where}: alias *{alias} has no anchor")
            if anchors[alias] not in keep:
                keep.add(anchors[alias])
                todo.append(anchors[alias])
    out = list(header[1])
    for key, body in presets:
        if key is None or key in keep:
            out += body
    return out


def filter_config(text, selection, presets):
    """config.yml for the release: the sections of the picked parts (and the sections no
    part owns, e.g. data_sources), each with the presets ``presets[section]`` matches."""
    lines = text.splitlines(keepends=True)
    out = []
    for key, body in _blocks(lines, _TOP_KEY, ""):
        if key in selection.dropped_config_sections:
            continue
        if key in presets:
            key_line = next(i for i, line in enumerate(body) if _TOP_KEY.match(line))
            inner = _filter_presets(body[key_line + 1 :], presets[key], f"config.yml: {key}")
            body = body[: key_line + 1] + inner
        out += body
    new = "".join(out)
    try:
        yaml.safe_load(new)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ReleaseError(
            f"config.yml with the course's presets only is not valid: {first}"
        ) from None
    return new
