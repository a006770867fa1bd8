"""The command line and run start-up shared by the demos (flower, PixMo, scratch).

A demo file holds its ``train(cfg)`` and ends with ``cli.run_demo(...)``; everything else
that every demo does the same way is here.

The demos take the same flags (``--exp_name --output_dir --data_dir --weights --resume
--config``), read a preset from their section of config.yml, fall back to generated
synthetic data only when ``--data_dir`` is NOT given and the default data folder is missing
(a ``--data_dir`` that does not exist is an error, even when it names the default folder),
say where the real data comes from (``data_sources:`` in config.yml, set by the course
staff), and open a run directory by the same rules (an existing run needs ``--resume``;
nothing is written before every input has been checked). What differs between the demos
(data, model) is in the demo and its recipe (``kit/<question>/recipe.py``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch.distributed as dist
import yaml
from absl import app, flags

from kit.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    apply_overrides,
    load_preset,
    read_data_sources,
    to_dict,
)
from kit.distributed import DistContext
from kit.errors import UserError
from kit.runs import check_resume_config, prepare_run_dir, setup_logging, write_config
from kit.stopping import run_main
from kit.trainer import TrainConfig, Trainer

FLAGS = flags.FLAGS
DEMO_FLAGS = ("exp_name", "output_dir", "data_dir", "weights", "resume", "config", "set")
C = TypeVar("C")


def define_flags(
    section: str, default_preset: str, data_default: str, weights_what: str | None
) -> None:
    """Declare the demo flags (``run_demo`` does, when a demo runs), replacing the ones an
    earlier demo of this process declared: importing a demo declares nothing, and tests may
    run several demos in one process. ``weights_what`` None: the demo trains from scratch
    and refuses --weights."""
    for name in DEMO_FLAGS:
        if name in FLAGS:
            delattr(FLAGS, name)
    flags.DEFINE_string(
        "exp_name", default_preset, f"Preset name in config.yml (section '{section}')."
    )
    flags.DEFINE_string("output_dir", None, "Run directory (default: runs/<exp_name>).")
    flags.DEFINE_string("data_dir", None, f"Data folder (default: {data_default}).")
    weights_help = (
        f"{weights_what} ImageNet weights (.pth); default: torchvision's cache."
        if weights_what
        else "Not used: this demo trains from scratch."
    )
    flags.DEFINE_string("weights", None, weights_help)
    flags.DEFINE_bool("resume", False, "Continue the run in --output_dir from its checkpoint.pt.")
    flags.DEFINE_string("config", None, "Presets file (default: config.yml next to this script).")
    flags.DEFINE_multi_string(
        "set",
        [],
        "Change one setting of the preset for this run, e.g. --set epochs=1 --set lr=0.01 "
        "(KEY=VALUE, VALUE read as YAML; checked like a preset's keys).",
    )


def setting_overrides(pairs: list[str]) -> dict:
    """``--set KEY=VALUE`` flags as a mapping; each VALUE is read as YAML (``1`` an int,
    ``0.1`` a float, ``[32, 64]`` a list, ``none`` a text)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair}: give KEY=VALUE, e.g. --set epochs=1")
        try:
            overrides[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise UserError(f"--set {pair}: {value!r} is not a value; e.g. --set lr=0.01") from None
    return overrides


def resolve_config(section: str, config_cls: type[C]) -> C:
    """The preset named by --exp_name, with --set, --data_dir and --weights applied."""
    try:
        cfg = load_preset(section, FLAGS.exp_name, config_cls, FLAGS.config)
        cfg = apply_overrides(cfg, setting_overrides(FLAGS.set), where="--set")
    except ConfigError as err:
        raise UserError(str(err)) from None
    if FLAGS.data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=FLAGS.data_dir)
    if FLAGS.weights is not None:
        if not Path(FLAGS.weights).is_file():
            raise UserError(
                f"--weights {FLAGS.weights} does not exist; give a .pth file or drop the flag"
            )
        cfg = dataclasses.replace(cfg, weights=FLAGS.weights)
    return cfg


def output_dir() -> Path:
    """The run directory (--output_dir, default runs/<exp_name>), checked against the
    run-directory rules before any slow work; ``start_run`` creates it later."""
    out = Path(FLAGS.output_dir or f"runs/{FLAGS.exp_name}")
    prepare_run_dir(out, FLAGS.resume, create=False)
    return out


def data_source(name: str) -> str:
    """Where the real data set ``name`` ("flowers", "pixmo", ...) comes from: the
    ``data_sources:`` entry of the presets file (--config), else of the kit's config.yml
    (a URL or a path)."""
    given = FLAGS.config if "config" in FLAGS and FLAGS.config else None
    files = [given] if given else []
    if DEFAULT_CONFIG_PATH.is_file() or not files:
        files.append(None)  # the kit's config.yml
    try:
        for path in files:
            where = read_data_sources(path).get(name)
            if where:
                return where
    except ConfigError as err:
        raise UserError(str(err)) from None
    return "ask your course staff"


def synthetic_banner(banner: str, name: str, default_dir: str) -> str:
    """``banner`` (a synthetic data set's warning, framed by rules of '=') with a line that
    says where the real data comes from and where to put it."""
    lines = banner.splitlines()
    where = f"Real data: {data_source(name)} (put it in {default_dir}/ or pass --data_dir)."
    return "\n".join(lines[:-1] + [where] + lines[-1:])


def data_dir_flag_given() -> bool:
    """Whether --data_dir was on the command line (absl flags), whatever its value."""
    try:
        return FLAGS["data_dir"].present > 0
    except KeyError:  # flags not declared: called from a notebook or a test
        return False


def choose_data_folder(
    data_dir: str,
    default_dir: str,
    synthetic_dir: str,
    ctx: DistContext,
    banner: str,
    is_ready: Callable[[Path], bool],
    generate: Callable[[Path], None],
    *,
    explicit: bool | None = None,
    source: str | None = None,
) -> tuple[Path, bool]:
    """The data folder to read, and whether it is synthetic.

    A folder that exists is used as it is. A missing folder that was asked for
    (``explicit``: default, --data_dir on the command line, or a preset's data_dir other
    than ``default_dir``) is an error, also when it names ``default_dir``: a typo or a
    data set not copied yet must not turn into a silent synthetic run. Only when nothing
    asked for a folder is synthetic data generated into ``synthetic_dir`` (never into the
    real data's place) unless ``is_ready(synthetic_dir)``, by rank 0 while the others wait.
    ``source`` (where the real data comes from) goes into the error message.
    """
    path = Path(data_dir)
    if explicit is None:
        explicit = data_dir_flag_given() or path != Path(default_dir)
    if path.exists():
        if not path.is_dir():
            raise UserError(
                f"--data_dir {path} is a file; give the folder holding train/val/test_data.pkl"
            )
        return path, False
    if explicit:
        real = f" (the real data: {source})" if source else ""
        raise UserError(
            f"--data_dir {path} does not exist; give the folder that holds "
            f"train/val/test_data.pkl{real}, or omit --data_dir for synthetic data"
        )
    print(banner, flush=True)
    synth = Path(synthetic_dir)
    if ctx.is_main and not is_ready(synth):
        print(f"generating synthetic data into {synth} (once; later runs reuse it)", flush=True)
        generate(synth)
    if ctx.distributed:
        dist.barrier()
    return synth, True


def run_settings(cfg: Any, synthetic: bool) -> dict:
    """What config.yaml records about a run: every setting of ``cfg``, the preset's name and
    whether the data was synthetic."""
    return dict(to_dict(cfg), exp_name=FLAGS.exp_name, synthetic_data=synthetic)


def start_run(out: Path, cfg: Any, resolved: dict, ctx: DistContext, synthetic_banner: str | None):
    """Create (or, with --resume, reopen) the run directory and return its logger.

    Call it after every input has been checked and the model built, so that bad input
    leaves nothing behind. Saves the resolved settings (``run_settings(cfg, ...)``) as
    config.yaml on a new run; on --resume they must equal the saved ones (a setting the kit
    gained since: its default).
    """
    if FLAGS.resume:
        check_resume_config(out, resolved, to_dict(type(cfg)()))
    if ctx.is_main:
        prepare_run_dir(out, FLAGS.resume)
        if not FLAGS.resume:
            write_config(out, resolved)
    if ctx.distributed:
        dist.barrier()
    log = setup_logging(out, ctx.is_main)
    if synthetic_banner:
        log.warning(synthetic_banner)
    log.info(f"run {out}: preset {FLAGS.exp_name}, {ctx.world_size} process(es) on {ctx.device}")
    return log


def make_trainer(
    model, train_src, val_src, out: Path, cfg, ctx: DistContext, resolved: dict, log, **options
):
    """The Trainer of a demo run in ``out`` (opened by ``start_run``): ``cfg``'s training
    settings (its TrainConfig fields) and --resume; ``options`` go to Trainer as they are
    (``loss_fn``, ``on_step_end``)."""
    return Trainer(
        model,
        train_src,
        val_src,
        out,
        TrainConfig.from_config(cfg),
        dist_ctx=ctx,
        full_config=resolved,
        resume=FLAGS.resume,
        logger=log,
        **options,
    )


def make_main(
    section: str, config_cls: type, train: Callable, takes_weights: bool = True
) -> Callable[[list[str]], None]:
    """absl's ``main(argv)``: reject stray arguments (and --weights where the demo takes
    none), then ``train(config)`` under run_main (one-line errors, exit 75 when preempted)."""

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            print(f"error: unexpected arguments {' '.join(argv[1:])}; see --help", file=sys.stderr)
            sys.exit(1)
        if FLAGS.weights is not None and not takes_weights:
            script = Path(argv[0]).name
            print(
                f"error: --weights is not used by {script} (models train from scratch); drop it",
                file=sys.stderr,
            )
            sys.exit(1)
        run_main(lambda: train(resolve_config(section, config_cls)))

    return main


def run_demo(
    section: str,
    config_cls: type,
    train: Callable,
    *,
    default_preset: str,
    data_default: str,
    weights_what: str | None = None,
    argv: list[str] | None = None,
) -> int:
    """A demo's command line: its flags, then ``train(preset)`` (see ``make_main``); exits
    with the run's status. With ``argv`` (the arguments, without the program's name) it
    runs in this process instead and returns the status: how the tests run a demo without
    starting Python and torch again."""
    define_flags(section, default_preset, data_default, weights_what)
    main = make_main(section, config_cls, train, takes_weights=weights_what is not None)
    if argv is None:
        app.run(main)
    program = f"demo_{section}.py"
    FLAGS.unparse_flags()
    try:
        main(FLAGS([program, *argv]))
    except SystemExit as done:
        return 0 if done.code is None else done.code
    return 0
