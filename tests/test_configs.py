"""The shipped training configs (configs/, docs/training.md "Configs"): a few bases in
configs/base/ and runnable variants that start from one (``base:``) and state only what differs.
Every config resolves; the variants stay short, their comments say what they are for, and no two
files repeat the same settings, so the near-copies cannot creep back."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml

from refscale.train.config import load_file, read_yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BASE_DIR = CONFIG_DIR / "base"
RUNNABLE = sorted(CONFIG_DIR.glob("*.yaml"))
BASES = sorted(BASE_DIR.glob("*.yaml"))

#: non-comment lines of one file (a runnable variant or a base)
MAX_LINES = 24
#: comment lines of one file: what it is for and what differs (git keeps how it came about)
MAX_COMMENT_LINES = 7
#: setting lines (``key: value``, not section headers or ``base:``) two files may have in common
MAX_SHARED_SETTINGS = 8


def code_lines(path: Path) -> list[str]:
    """Non-blank lines without comments, stripped."""
    out = []
    for line in path.read_text().splitlines():
        text = "" if line.lstrip().startswith("#") else line.split(" #")[0].strip()
        if text:
            out.append(text)
    return out


def settings(path: Path) -> set[str]:
    return {s for s in code_lines(path) if not re.fullmatch(r"[\w-]+:", s) and not s.startswith("base:")}


def base_chain(path: Path) -> list[Path]:
    """The files a config's ``base:`` chain reads, the config itself first."""
    chain = [path]
    while (base := yaml.safe_load(chain[-1].read_text()).get("base")) is not None:
        chain.append((chain[-1].parent / base).resolve())
    return chain


def test_the_tree_has_runnable_configs_and_a_few_bases():
    assert len(RUNNABLE) >= 30 and 1 <= len(BASES) <= 8


@pytest.mark.parametrize("path", RUNNABLE, ids=[p.stem for p in RUNNABLE])
def test_every_config_resolves_from_a_base(path):
    cfg = load_file(path)
    assert cfg["model"]["arch"] and cfg["schedule"]["steps"] > 0
    chain = base_chain(path)
    assert len(chain) >= 2 and chain[-1].parent == BASE_DIR, f"{path.name} does not start from configs/base/"


def test_every_base_is_used_and_reads():
    used = {p for path in RUNNABLE for p in base_chain(path)[1:]}
    for base in BASES:
        assert isinstance(read_yaml(base), dict)
        assert base.resolve() in used, f"{base.name} is no config's base"


@pytest.mark.parametrize("path", RUNNABLE + BASES, ids=[p.relative_to(CONFIG_DIR).as_posix() for p in RUNNABLE + BASES])
def test_configs_are_short_and_say_what_they_are_for(path):
    lines = path.read_text().splitlines()
    comments = [line for line in lines if line.lstrip().startswith("#")]
    assert lines and lines[0].startswith("# "), f"{path.name}: start with a comment saying what it is for"
    assert len(code_lines(path)) <= MAX_LINES, f"{path.name}: {len(code_lines(path))} lines; start from a base"
    assert len(comments) <= MAX_COMMENT_LINES, f"{path.name}: {len(comments)} comment lines; say what differs"


def test_no_two_configs_repeat_their_settings():
    files = RUNNABLE + BASES
    found = {(a.name, b.name): len(settings(a) & settings(b)) for a, b in itertools.combinations(files, 2)}
    worst = sorted(found.items(), key=lambda kv: -kv[1])[:3]
    assert max(found.values()) <= MAX_SHARED_SETTINGS, f"near-copies (move the shared settings into a base): {worst}"


def test_the_checks_catch_a_near_copy(tmp_path):
    """A stand-alone copy of a resolved config fails both the length and the repetition checks."""
    full = load_file(CONFIG_DIR / "irn-x2-oscd-cpu.yaml")
    full["data"]["path"] = "../shared/data/oscd"
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(full))
    full["model"]["arch"] = "refscale-x2"
    b.write_text(yaml.safe_dump(full))
    assert len(code_lines(a)) > MAX_LINES and len(settings(a) & settings(b)) > MAX_SHARED_SETTINGS
