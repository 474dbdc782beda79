"""sd-scripts' dataset-config schema: the corpus of valid and invalid configs with the accept/reject sd-scripts
gives each (tests/data/dataset_corpus/manifest.toml), reading the schema tables and the sanitizer flags from a
checkout, and finding places in the TOML text."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorasetup.engine.target import tomllib
from lorasetup.sd.dataset.schema import (
    BUILTIN_SCHEMA,
    FLOAT_PAIR,
    INT_OR_PAIR,
    NUMBER,
    ConfigSyntaxError,
    SchemaChecker,
    Support,
    TomlLayout,
    format_place,
    load_config,
    read_schema,
    sanitizer_support,
)

CORPUS = Path(__file__).parents[1] / "data" / "dataset_corpus"
MANIFEST = tomllib.loads((CORPUS / "manifest.toml").read_text(encoding="utf-8"))["case"]
# ConfigSanitizer(dreambooth, finetuning, controlnet, dropout) per entry script (and masked_loss), as sd-scripts
# 48d368fa builds it: train_network.py, train_db.py, fine_tune.py, train_control_net.py, train_textual_inversion.py.
MODES = {
    "train_network": Support(True, True, False, True), "train_network_masked": Support(True, True, True, True),
    "train_db": Support(True, False, False, True), "train_db_masked": Support(True, False, True, True),
    "fine_tune": Support(False, True, False, True), "controlnet": Support(False, False, True, True),
    "textual_inversion": Support(True, True, False, False),
}


def validate(path: Path, support: Support) -> tuple[bool, list]:
    try:
        config = load_config(path)
    except ConfigSyntaxError as exc:
        return False, [exc]
    errors = SchemaChecker(support, BUILTIN_SCHEMA, {"learning_rate"}).validate(config.data, config.fmt, config.layout)
    return not errors, errors


def test_corpus_is_large_and_mixed() -> None:
    assert len(MANIFEST) >= 60
    assert sum(c["accept"] for c in MANIFEST) >= 25 and sum(not c["accept"] for c in MANIFEST) >= 35
    assert {c["file"] for c in MANIFEST} == {p.name for p in CORPUS.iterdir() if p.name != "manifest.toml"}


def test_corpus_accepted_configs_use_every_key_of_every_table() -> None:
    used: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            used.update(value)
            for sub in value.values():
                walk(sub)
        elif isinstance(value, list):
            for sub in value:
                walk(sub)
    for case in MANIFEST:
        if case["accept"]:
            walk(load_config(CORPUS / case["file"]).data)
    every = {key for table in BUILTIN_SCHEMA.values() for key in table}
    assert every <= used, sorted(every - used)


@pytest.mark.parametrize("case", MANIFEST, ids=[c["file"] for c in MANIFEST])
def test_corpus_case(case: dict) -> None:
    accepted, errors = validate(CORPUS / case["file"], MODES[case["mode"]])
    assert accepted == case["accept"], [getattr(e, "place", e) for e in errors]
    places = {getattr(e, "place", None) for e in errors}
    assert set(case.get("places", [])) <= places, places


def test_every_error_is_reported_with_place_line_expected_and_found() -> None:
    _, errors = validate(CORPUS / "many_errors.toml", MODES["train_network"])
    rendered = [e.render("many_errors.toml") for e in errors]
    assert len(errors) == 8
    assert rendered[0] == ('many_errors.toml:2 general.shuffle_caption: wrong type; expected true or false (no quotes),'
                           ' found "yes" (a string)')
    assert any(r.startswith("many_errors.toml:11 datasets[0].subsets[0].num_repeat: unknown key") and
               "did you mean `num_repeats`?" in r for r in rendered)
    assert any("many_errors.toml:3 general.learning_rate" in r and "training argument" in r for r in rendered)
    assert any("datasets[0].validation_split" in r and "write 0.0" in r for r in rendered)
    assert any("datasets[0].subsets[0].batch_size" in r and "dataset-level key" in r for r in rendered)
    assert any(r.startswith("many_errors.toml:14 datasets[0].subsets[1].image_dir: required key not provided")
               for r in rendered)


def test_syntax_errors_carry_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigSyntaxError) as info:
        load_config(CORPUS / "syntax_windows_users.toml")
    assert (info.value.line, info.value.column) == (3, 18)
    with pytest.raises(ConfigSyntaxError) as info:
        load_config(CORPUS / "json_trailing_comma.json")
    assert info.value.line == 1
    (tmp_path / "latin1.toml").write_bytes(b'[general]\ncaption_prefix = "caf\xe9"\n')
    with pytest.raises(ConfigSyntaxError, match="not UTF-8"):
        load_config(tmp_path / "latin1.toml")
    (tmp_path / "x.yaml").write_text("a: 1\n")
    with pytest.raises(ConfigSyntaxError, match="only .toml or .json"):
        load_config(tmp_path / "x.yaml")


# ----------------------------------------------------------------------------- reading the checkout

def render_config_util(tables: dict[str, dict[str, tuple[str, bool]]]) -> str:
    """A config_util.py-shaped module whose ConfigSanitizer declares `tables` with sd-scripts' constructs."""
    source = {"bool": "bool", "int": "int", "float": "float", "str": "str", "table": "dict",
              NUMBER: "Any(float, int)",
              FLOAT_PAIR: "functools.partial(__validate_and_convert_twodim.__func__, float)",
              INT_OR_PAIR: "functools.partial(__validate_and_convert_scalar_or_twodim.__func__, int)"}
    lines = ["import functools", "from voluptuous import Any, Required", "", "class ConfigSanitizer:"]
    for name, table in tables.items():
        lines.append(f"    {name} = {{")
        for key, (kind, required) in table.items():
            lines.append(f"        {'Required(' + repr(key) + ')' if required else repr(key)}: {source[kind]},")
        lines.append("    }")
    return "\n".join(lines) + "\n"


def test_schema_tables_are_read_from_the_checkout(tmp_path: Path) -> None:
    module = tmp_path / "config_util.py"
    module.write_text(render_config_util(BUILTIN_SCHEMA))
    tables, origin = read_schema(module)
    assert tables == BUILTIN_SCHEMA and origin == str(module)
    newer = {name: dict(table) for name, table in BUILTIN_SCHEMA.items()}
    newer["SUBSET_ASCENDABLE_SCHEMA"]["new_option"] = ("bool", False)
    module.write_text(render_config_util(newer))
    tables, _ = read_schema(module)
    checker = SchemaChecker(MODES["train_network"], tables)
    data = {"datasets": [{"subsets": [{"image_dir": "/x", "new_option": True}]}]}
    assert checker.validate(data) == []
    assert SchemaChecker(MODES["train_network"], BUILTIN_SCHEMA).validate(data)[0].place == \
        "datasets[0].subsets[0].new_option"


def test_schema_falls_back_to_the_built_in_copy(tmp_path: Path) -> None:
    assert read_schema(None)[0] is BUILTIN_SCHEMA
    module = tmp_path / "config_util.py"
    module.write_text("class ConfigSanitizer:\n    SUBSET_ASCENDABLE_SCHEMA = {'x': lambda v: v}\n")
    tables, origin = read_schema(module)
    assert tables is BUILTIN_SCHEMA and "built-in copy" in origin


def test_sanitizer_flags_are_read_from_the_script_or_its_base(tmp_path: Path) -> None:
    (tmp_path / "train_network.py").write_text(
        "x = BlueprintGenerator(ConfigSanitizer(True, True, args.masked_loss, True))\n")
    (tmp_path / "sdxl_train_network.py").write_text("import train_network\n")
    (tmp_path / "fine_tune.py").write_text("bg = BlueprintGenerator(ConfigSanitizer(False, True, False, True))\n")
    masked = sanitizer_support(tmp_path / "sdxl_train_network.py", lambda name: name == "masked_loss")
    assert (masked.dreambooth, masked.finetuning, masked.controlnet, masked.dropout) == (True, True, True, True)
    assert masked.origin.startswith("train_network.py: ConfigSanitizer(")
    plain = sanitizer_support(tmp_path / "train_network.py", lambda name: False)
    assert plain.controlnet is False
    ft = sanitizer_support(tmp_path / "fine_tune.py", lambda name: False)
    assert (ft.dreambooth, ft.finetuning) == (False, True)
    assumed = sanitizer_support(tmp_path / "missing.py", lambda name: False)
    assert "assumed train_network.py rules" in assumed.origin


# ----------------------------------------------------------------------------- places in the text

def test_layout_maps_tables_keys_and_skips_strings_and_arrays() -> None:
    text = ('# a comment with [[datasets]] in it\n'
            '[general]\r\n'
            'caption_prefix = """a\n[[datasets]]\nnot a header"""\n'
            "note = '''x = 1'''\n"
            'face = [\n  2.0, # four\n  4.0,\n]\n'
            '\n'
            '[[datasets]]\n'
            '  resolution = [512, 512]  # pair\n'
            '  [[datasets.subsets]]\n'
            '  image_dir = "C:\\\\img"\n'
            '  "quoted key" = { a = 1 }\n'
            '  [[datasets.subsets]]\n'
            '  num_repeats = 2\n'
            '[[datasets]]\n'
            '  [[datasets.subsets]]\n'
            "  image_dir = 'x'\n")
    tomllib.loads(text)
    layout = TomlLayout(text)
    assert set(layout.tables) == {(), ("general",), ("datasets", 0), ("datasets", 0, "subsets", 0),
                                  ("datasets", 0, "subsets", 1), ("datasets", 1), ("datasets", 1, "subsets", 0)}
    assert layout.line_of(("general", "caption_prefix")) == 3
    assert layout.line_of(("general", "face")) == 7
    assert layout.line_of(("datasets", 0)) == 12
    assert layout.line_of(("datasets", 0, "resolution")) == 13
    assert layout.line_of(("datasets", 0, "subsets", 0, "quoted key")) == 16
    assert layout.line_of(("datasets", 0, "subsets", 1, "num_repeats")) == 18
    assert layout.line_of(("datasets", 1, "subsets", 0, "image_dir")) == 21
    span = layout.tables[("datasets", 0, "subsets", 0)].keys["image_dir"]
    assert text[span.start:span.end] == '"C:\\\\img"'
    span = layout.tables[("general",)].keys["face"]
    assert text[span.start:span.end].startswith("[") and text[span.start:span.end].endswith("]")
    span = layout.tables[("datasets", 0)].keys["resolution"]
    assert text[span.start:span.end] == "[512, 512]"


def test_places_are_spelled_as_in_the_issue() -> None:
    assert format_place(("datasets", 0, "subsets", 1, "num_repeat")) == "datasets[0].subsets[1].num_repeat"
    assert format_place(("general", "a.b")) == 'general."a.b"'
