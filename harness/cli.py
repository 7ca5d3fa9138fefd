"""Console entry point ``salbench``.

* ``salbench [overrides]`` / ``salbench -m [sweep overrides]``: the Hydra job (config ``config``);
* ``salbench report DIR...``: the report of finished runs (also ``salbench-report``);
* ``salbench check DIR... --baseline FILE [--update]``: the regression gate (:mod:`salbench.harness.check`);
* ``salbench crosscheck [overrides]``: methods against captum / pytorch-grad-cam (config ``crosscheck``);
* ``salbench inspect [overrides]``: filters, activations, patches, class models, embeddings and
  Network Dissection of a model (config ``inspect``, :mod:`salbench.inspection.job`).

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
from typing import Callable, List, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

SUBCOMMANDS = ("report", "check", "crosscheck", "inspect")


def config_dir() -> str:
    """Absolute path of the packaged config tree (``conf/`` in a checkout)."""
    return str(Path(str(resources.files("salbench.conf"))).resolve())


def _hydra_app(config_name: str, job: Callable[[DictConfig], Optional[int]]) -> Callable[[], None]:
    from salbench.harness.schema import register_schemas

    register_schemas()

    @hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")
    def app(cfg: DictConfig) -> Optional[int]:
        return job(cfg)

    return app


GROUPS = ("method", "metric", "model", "dataset", "experiment", "debug")
_GROUP_OVERRIDE = re.compile(r"^[+~]{0,2}(%s)=(.*)$" % "|".join(GROUPS))


def unknown_group_options(overrides: List[str]) -> List[str]:
    """Messages for group overrides naming options that have no YAML in ``conf/<group>/``
    (Hydra's own message for a multi-select group lists no choices)."""
    from salbench.harness.registry import UnknownNameError

    messages = []
    for override in overrides:
        match = _GROUP_OVERRIDE.match(override)
        if not match or "(" in match.group(2):  # glob(...), range(...): Hydra expands them
            continue
        group, value = match.groups()
        choices = sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
        for name in re.split(r"[\[\],\s'\"]+", value):
            if name and name != "null" and name not in choices:
                messages.append(str(UnknownNameError(f"{group} option", name, choices)))
    return messages


def user_errors() -> tuple:
    """The exceptions that are the user's input, not a bug: one line and exit status 2."""
    from salbench.harness.registry import OptionError, UnknownNameError
    from salbench.harness.store import OutputLocked

    return (ValueError, FileNotFoundError, UnknownNameError, OptionError, OutputLocked)


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
    if argv and argv[0] == "crosscheck":
        from salbench.harness.crosscheck import crosscheck_main

        sys.argv = [f"{sys.argv[0]} crosscheck", *argv[1:]]
        _hydra_app("crosscheck", report_user_errors(crosscheck_main))()
        return
    if argv and argv[0] == "inspect":
        from salbench.inspection.config import register_inspect_schema
        from salbench.inspection.job import inspect_main

        problems = unknown_group_options([a for a in argv[1:] if not a.startswith("-")])
        if problems:
            print("salbench inspect: error: " + "\n".join(problems), file=sys.stderr)
            sys.exit(2)
        register_inspect_schema()
        sys.argv = [f"{sys.argv[0]} inspect", *argv[1:]]
        _hydra_app("inspect", report_user_errors(inspect_main))()
        return
    problems = unknown_group_options([a for a in argv if not a.startswith("-")])
    if problems:
        print("salbench: error: " + "\n".join(problems), file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    _hydra_app("config", report_user_errors(run_main_job))()


if __name__ == "__main__":
    main()
