"""Console entry point ``salbench``.

* ``salbench [overrides]`` / ``salbench -m [sweep overrides]``: the Hydra job (config ``config``);
* ``salbench report DIR...``: the report of finished runs (also ``salbench-report``);
* ``salbench check DIR... --baseline FILE [--update]``: the regression gate (:mod:`salbench.harness.check`);
* ``salbench crosscheck [overrides]``: methods against captum / pytorch-grad-cam (config ``crosscheck``);
* ``salbench inspect [overrides]``: filters, activations, patches, class models, embeddings and
  Network Dissection of a model (config ``inspect``, :mod:`salbench.inspection.job`);
* ``salbench rescore RUN_DIR [overrides]``: adds metrics to a finished run from its saved maps
  (:mod:`salbench.harness.rescore`).

Plugins (``plugins=[module,...]`` on the command line, and installed ``salbench.plugins`` entry
points) are loaded before Hydra composes, and every registered name without a packaged YAML is
stored as a config option (:func:`salbench.harness.schema.store_registered_options`), so the
names a plugin registers are options on the command line, in sweeps and in ``--help``.

A config or data error (an unknown key or option, a missing file, an empty dataset, a locked
output folder) prints one line ``salbench: error: ...`` and exits with status 2; ``--verbose``
(or ``HYDRA_FULL_ERROR=1``) shows the traceback instead.
"""
from __future__ import annotations

import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

SUBCOMMANDS = ("report", "check", "crosscheck", "inspect", "rescore")


def config_dir() -> str:
    """Absolute path of the packaged config tree (``conf/`` in a checkout)."""
    return str(Path(str(resources.files("salbench.conf"))).resolve())


def _hydra_app(config_name: str, job: Callable[[DictConfig], Optional[int]]) -> Callable[[], None]:
    @hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")
    def app(cfg: DictConfig) -> Optional[int]:
        return job(cfg)

    return app


GROUPS = ("method", "metric", "model", "dataset", "experiment", "debug")
_GROUP_OVERRIDE = re.compile(r"^[+~]{0,2}(%s)=(.*)$" % "|".join(GROUPS))


def hydra_arguments(argv: List[str]) -> Any:
    """Hydra's own reading of a command line (``--config-dir``, ``--config-name``, the
    overrides ...), or None when Hydra would reject it (Hydra then says why)."""
    from hydra._internal.utils import get_args_parser

    try:
        return get_args_parser().parse_args(argv)
    except (SystemExit, Exception):
        return None


def group_choices(group: str, config_name: str = "config", argv: Optional[List[str]] = None) -> List[str]:
    """The options of config group ``group`` as Hydra finds them for this command line: the
    packaged YAMLs, the stored nodes of registered names (plugins), ``--config-dir``, Hydra
    search-path plugins and ``hydra.searchpath`` (from the overrides or the primary config)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.object_type import ObjectType
    from hydra.core.config_search_path import SearchPathQuery

    args = hydra_arguments(list(argv or []))
    primary = config_dir()
    if args is not None and args.config_path is not None:
        primary = os.path.abspath(args.config_path)
    search_path = create_config_search_path(primary)
    if args is not None and args.config_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(args.config_dir)}",
                            anchor=SearchPathQuery(provider="schema"))
    overrides = [o for o in (args.overrides if args is not None else []) if o.lstrip("+~").startswith("hydra.searchpath")]
    name = args.config_name if args is not None and args.config_name else config_name
    loader = ConfigLoaderImpl(config_search_path=search_path)
    return sorted(loader.get_group_options(group, results_filter=ObjectType.CONFIG, config_name=name,
                                           overrides=overrides))


def unknown_group_options(overrides: List[str], config_name: str = "config",
                          argv: Optional[List[str]] = None) -> List[str]:
    """Messages for group overrides naming options that the config search path does not hold
    (Hydra's own message for a multi-select group lists no choices); ``argv``: the whole command
    line (its ``--config-dir`` and ``hydra.searchpath`` extend the search path). Plugins must be
    loaded and their nodes stored first (:func:`prepare_config_options`)."""
    from salbench.harness.registry import UnknownNameError

    messages = []
    choices: Dict[str, List[str]] = {}
    for override in overrides:
        match = _GROUP_OVERRIDE.match(override)
        if not match or "(" in match.group(2):  # glob(...), range(...): Hydra expands them
            continue
        group, value = match.groups()
        if group not in choices:
            try:
                choices[group] = group_choices(group, config_name, argv if argv is not None else overrides)
            except Exception:  # a search path Hydra cannot read: Hydra reports it itself
                return []
        for name in re.split(r"[\[\],\s'\"]+", value):
            if name and name != "null" and name not in choices[group]:
                messages.append(str(UnknownNameError(f"{group} option", name, choices[group])))
    return messages


def prepare_config_options(argv: List[str]) -> None:
    """Load the plugins the command line names (``plugins=[...]``) and the installed entry
    points, and store a config node for every registered name without a YAML."""
    from salbench.harness.plugins import load_plugins, plugins_in_overrides
    from salbench.harness.schema import register_schemas

    args = hydra_arguments(argv)
    load_plugins(plugins_in_overrides(args.overrides if args is not None else []))
    register_schemas()


def user_errors() -> tuple:
    """The exceptions that are the user's input, not a bug: one line and exit status 2."""
    from salbench.harness.plugins import PluginError
    from salbench.harness.registry import OptionError, UnknownNameError
    from salbench.harness.store import OutputLocked

    return (ValueError, FileNotFoundError, UnknownNameError, OptionError, OutputLocked, PluginError)


def verbose() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("SALBENCH_VERBOSE") == "1"


def report_user_errors(job: Callable[[DictConfig], Optional[int]]) -> Callable[[DictConfig], Optional[int]]:
    """Run ``job``; a user error prints ``salbench: error: <message>`` and exits 2 (the
    traceback with ``--verbose`` / ``HYDRA_FULL_ERROR=1``)."""

    def wrapped(cfg: DictConfig) -> Optional[int]:
        try:
            return job(cfg)
        except user_errors() as error:
            if verbose():
                raise
            print(f"salbench: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped


def run_main_job(cfg: DictConfig) -> None:
    from salbench.harness.runner import run_job

    hydra = HydraConfig.get()
    run_job(cfg, Path(hydra.runtime.output_dir), overrides=list(hydra.overrides.task))


def _prepare_or_exit(argv: List[str], prog: str) -> None:
    """:func:`prepare_config_options`; a plugin that fails is one line and exit status 2."""
    try:
        prepare_config_options(argv)
    except user_errors() as error:
        if verbose():
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)


def _check_group_options(argv: List[str], config_name: str, prog: str) -> None:
    problems = unknown_group_options([a for a in argv if not a.startswith("-")], config_name, argv)
    if problems:
        print(f"{prog}: error: " + "\n".join(problems), file=sys.stderr)
        sys.exit(2)


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:
        argv.remove("--verbose")
        os.environ["SALBENCH_VERBOSE"] = "1"
    if argv and argv[0] == "report":
        from salbench.reports.cli import main as report_main

        sys.exit(report_main(argv[1:]))
    if argv and argv[0] == "check":
        from salbench.harness.check import main as check_main

        sys.exit(check_main(argv[1:]))
    if argv and argv[0] == "rescore":
        from salbench.harness.rescore import main as rescore_main

        sys.exit(rescore_main(argv[1:]))
    if argv and argv[0] == "crosscheck":
        from salbench.harness.crosscheck import crosscheck_main

        _prepare_or_exit(argv[1:], "salbench crosscheck")
        sys.argv = [f"{sys.argv[0]} crosscheck", *argv[1:]]
        _hydra_app("crosscheck", report_user_errors(crosscheck_main))()
        return
    if argv and argv[0] == "inspect":
        from salbench.inspection.config import register_inspect_schema
        from salbench.inspection.job import inspect_main

        _prepare_or_exit(argv[1:], "salbench inspect")
        _check_group_options(argv[1:], "inspect", "salbench inspect")
        register_inspect_schema()
        sys.argv = [f"{sys.argv[0]} inspect", *argv[1:]]
        _hydra_app("inspect", report_user_errors(inspect_main))()
        return
    _prepare_or_exit(argv, "salbench")
    _check_group_options(argv, "config", "salbench")
    sys.argv = [sys.argv[0], *argv]
    _hydra_app("config", report_user_errors(run_main_job))()


if __name__ == "__main__":
    main()
