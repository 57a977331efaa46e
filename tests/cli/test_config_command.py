"""``hpmodel config``: every key documented from the dataclasses, and docs/config.md in step."""

import dataclasses
import typing

from conftest import ROOT, run_cli
from hpmodel import config
from hpmodel.commands.config import MARKER, config_markdown, document, key_tables
from hpmodel.kernel.docs import describe_dataclass, split_comment
from hpmodel.strategies.registry import available_strategies, strategy_class


def documented_keys() -> dict[str, object]:
    return {doc.key: doc for _, docs in key_tables() for doc in docs}


def test_docs_config_md_matches_the_generated_text():
    text = (ROOT / "docs" / "config.md").read_text()
    assert MARKER in text, "docs/config.md lost its generated marker"
    assert text == document(text), ("docs/config.md drifted from the config dataclasses: run "
                                    "'hpmodel config --write docs/config.md'")
    assert text.startswith("# Configuration\n"), "the hand-written header must stay"


def test_every_config_key_is_listed_with_a_meaning():
    keys = documented_keys()
    for section, kind in typing.get_type_hints(config.RunConfig).items():
        if dataclasses.is_dataclass(kind) and section != "strategy":
            for item in dataclasses.fields(kind):
                assert keys.get(f"{section}.{item.name}"), f"{section}.{item.name} is not listed"
    for name in available_strategies():
        for item in dataclasses.fields(strategy_class(name).Config):
            assert f"strategy.{item.name}" in keys, f"strategy '{name}' key {item.name} is not listed"
    missing = sorted(k for k, doc in keys.items() if not doc.meaning)
    assert not missing, f"keys without a one-line meaning: {missing}"


def test_allowed_values_come_from_the_registries():
    keys = documented_keys()
    assert keys["model.name"].allowed == config.CHOICES["model.name"]
    assert set(keys["strategy.name"].allowed) == set(config.strategy_names())
    assert keys["train.precision"].default == '"fp32"'
    assert keys["strategy.gradient_compression"].allowed == ("none", "bf16", "fp16")


def test_comment_convention():
    assert split_comment("none | bf16 | fp16: all-reduce at half width") == (
        ("none", "bf16", "fp16"), "all-reduce at half width")
    assert split_comment("time (profiled fwd+bwd) | parameters") == (("time", "parameters"), "")
    assert split_comment("0: off") == ((), "0: off")

    @dataclasses.dataclass
    class Options:
        mode: str = "fast"  # fast | exact: how hard to try
        size: int = dataclasses.field(default=3, metadata={"help": "how many"})

    rows = [d.row() for d in describe_dataclass(Options, "opt.")]
    assert rows == [["opt.mode", "str", '"fast"', "fast, exact", "how hard to try"],
                    ["opt.size", "int", "3", "", "how many"]]


def test_cli_prints_a_section_and_markdown():
    proc = run_cli("config", "optimizer", check=True)
    assert "optimizer.lr" in proc.stdout and "data.batch_size" not in proc.stdout
    proc = run_cli("config", "--markdown", check=True)
    assert proc.stdout == config_markdown()
