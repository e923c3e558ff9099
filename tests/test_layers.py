"""The layering contract (.importlinter, run by `make test` as `lint-imports`) names every runner/ package once, and
each ignored import, if any, says why."""
from __future__ import annotations

import configparser
import re

from tests.helpers import ROOT


def _contract() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter", encoding="utf-8")
    return config


def test_the_layers_name_every_runner_package_once():
    layers = _contract()["importlinter:contract:layers"]["layers"]
    named = [name.strip() for line in layers.strip().splitlines() for name in re.split(r"[:|]", line)]
    packages = sorted(f"runner.{p.name}" for p in (ROOT / "runner").iterdir() if (p / "__init__.py").is_file())
    assert sorted(named) == packages and len(named) == len(set(named))


def test_the_contracts_read_function_level_imports_and_ignore_none_without_a_reason():
    config = _contract()
    assert config["importlinter"]["exclude_type_checking_imports"] == "True"
    assert config["importlinter:contract:acyclic"]["type"] == "acyclic_siblings"
    text = (ROOT / ".importlinter").read_text(encoding="utf-8").splitlines()
    for section in config.sections():
        for line in config[section].get("ignore_imports", "").strip().splitlines():
            raw = next(t for t in text if line.strip() in t)
            assert "#" in raw, f"{section}: ignored import {line.strip()!r} carries no reason (a # comment)"
