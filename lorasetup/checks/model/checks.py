"""The model gate: the base model file is whole, its family fits the script, the tokenizer loads at start.

No weights are loaded and nothing is unpickled: a .safetensors file is judged by its header, a diffusers
folder by its JSON files, a .ckpt only by its name and first bytes.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasetup.checks import check
from lorasetup.engine.context import Context
from lorasetup.engine.files import FileProblem, json_object, open_regular, read_source
from lorasetup.engine.result import Fix, FixError, Result
from lorasetup.engine.tomledit import Change, try_edit_fix
from lorasetup.sd.modelfamily import FAMILY_LABELS, Family, classify, classify_folder
from lorasetup.sd.safetensors_header import Header, HeaderError, read_header, sniff
from lorasetup.sd.trainargs import path_setting, train_args

BASE_MODEL_ARG = "pretrained_model_name_or_path"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The entry script that trains each family (sd-scripts names its scripts by family prefix).
FAMILY_SCRIPT = {"sd1": "train_network.py", "sd2": "train_network.py", "sdxl": "sdxl_train_network.py",
                 "flux": "flux_train_network.py", "sd3": "sd3_train_network.py"}
# sd-scripts' scripts without a family prefix train SD1.x/2.x (they use library/strategy_sd.py).
SD_SCRIPTS = ("train_network.py", "train_db.py", "fine_tune.py", "train_textual_inversion.py",
              "train_textual_inversion_XTI.py", "train_controlnet.py", "train_control_net.py")
SCRIPT_PREFIXES = (("sdxl_", {"sdxl"}), ("flux_", {"flux"}), ("sd3_", {"sd3"}))
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin", "diffusion_pytorch_model.safetensors.index.json",
                "model.safetensors.index.json")


def base_model(ctx: Context) -> tuple[Path | None, str | None]:
    """The base model path, and the raw value when it is a Hugging Face Hub id rather than a local path."""
    path = path_setting(ctx, "base_model", BASE_MODEL_ARG)
    raw = None if ctx.target.base_model is not None else train_args(ctx).get(BASE_MODEL_ARG)
    if path is not None and not path.exists() and isinstance(raw, str) and HUB_ID.match(raw):
        return path, raw
    return path, None


def _where(ctx: Context) -> str:
    if ctx.target.base_model is not None:
        return f"base_model ({ctx.target.sources.get('base_model', 'lorasetup config')})"
    return train_args(ctx).place(BASE_MODEL_ARG)


def _header(ctx: Context, path: Path) -> Header:
    return ctx.memo(f"model.header:{path}", lambda: read_header(path))


HEADER_HINTS = {
    "lfs-pointer": "fetch the real file: `git lfs install && git lfs pull` in its repository, or download it again",
    "pickle": "rename it to .ckpt, or better convert it to .safetensors; lorasetup will not unpickle it",
    "truncated": "download it again and compare its size with the one on the download page",
    "corrupt": "download it again; if it came from a converter, convert it again",
}


@check("model.file", "the base model exists and its header is sane (no weights loaded)", tags=("preflight",))
def model_file(ctx: Context) -> Result:
    path, hub_id = base_model(ctx)
    if path is None and not (ctx.target.train_config or ctx.target.train_args):
        return Result.skip("no training run configured (no base model, training config or arguments)",
                           hint="set `base_model = \"/path/model.safetensors\"` in lorasetup.toml, or pass "
                                "--base-model")
    if path is None:
        return Result.fail("no base model set: sd-scripts stops at start without one",
                           hint="set `base_model = \"/path/model.safetensors\"` in lorasetup.toml, or "
                                f"`{BASE_MODEL_ARG}` in the training config")
    if hub_id:
        return Result.warn(f"{hub_id} is a Hugging Face Hub id: sd-scripts downloads it at start (gigabytes); "
                           "offline the run dies before training", details=[f"from {_where(ctx)}"],
                           hint=f"download it once and point {BASE_MODEL_ARG} at the local file or folder")
    if not path.exists():
        return Result.fail(f"base model not found: {path}", details=[f"from {_where(ctx)}"],
                           hint="fix the path; sd-scripts dies at start with a 'not found' error after "
                                "reading the dataset")
    if path.is_dir():
        return _diffusers_folder(ctx, path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        with open_regular(path) as fh:
            kind = sniff(fh.read(64))
        if kind == "lfs-pointer":
            return Result.fail(f"{path.name} is a git-lfs pointer, not the model", hint=HEADER_HINTS["lfs-pointer"])
        return Result.warn(f"{path.name} is a PyTorch pickle ({path.suffix}): lorasetup does not open pickles, "
                           "so its family and integrity are not checked",
                           details=[f"{path}  {path.stat().st_size / 1e9:.2f} GB",
                                    "unpickling runs code from the file; a .safetensors copy cannot"],
                           hint="use the .safetensors release of this model if there is one")
    try:
        header = _header(ctx, path)
    except HeaderError as exc:
        return Result.fail(f"{path.name}: {exc}", details=[str(path)], hint=HEADER_HINTS[exc.kind])
    return Result.ok(f"{path.name}: {len(header.tensors)} tensors, {header.file_size / 1e9:.2f} GB, header sane",
                     details=[str(path)], data={"path": str(path), "tensors": len(header.tensors)})


def _diffusers_folder(ctx: Context, path: Path) -> Result:
    """A diffusers folder: model_index.json and, for each component it lists, a config and weights."""
    index = json_object(path / "model_index.json")
    if index is None:
        return Result.fail(f"{path} is a folder without model_index.json: not a diffusers model",
                           hint=f"point {BASE_MODEL_ARG} at the .safetensors file, or at the diffusers folder itself")
    problems: list[str] = []
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or None in spec or name in ("tokenizer", "tokenizer_2",
                                                                                        "feature_extractor"):
            continue  # sd-scripts loads the pipeline with tokenizer=None; empty entries are optional parts
        problems += _component_problems(ctx, path / name)
    if problems:
        return Result.fail(f"diffusers folder {path.name}: {len(problems)} part(s) missing or damaged",
                           details=problems, hint="download the model folder again (all of its parts)")
    return Result.ok(f"diffusers folder {path.name} ({index.get('_class_name', '?')}): every part present",
                     details=[str(path)], data={"path": str(path)})


def _component_problems(ctx: Context, part: Path) -> list[str]:
    """What is missing or damaged in one component folder (unet/, vae/, scheduler/, ...)."""
    name = part.name
    if name.startswith("scheduler"):
        return [] if (part / "scheduler_config.json").is_file() else [f"{name}/scheduler_config.json missing"]
    problems = [] if (part / "config.json").is_file() else [f"{name}/config.json missing"]
    weights = [part / w for w in WEIGHT_NAMES if (part / w).is_file()]
    if not weights:
        problems.append(f"{name}/ has no weights ({WEIGHT_NAMES[0]} or {WEIGHT_NAMES[1]})")
    for weight in weights:
        if weight.suffix == ".safetensors":
            try:
                _header(ctx, weight)
            except HeaderError as exc:
                problems.append(f"{name}/{weight.name}: {exc}")
    return problems


def script_families(script: str) -> set[str] | None:
    """The families an entry script trains, or None when lorasetup does not know the script."""
    name = Path(script).name
    for prefix, families in SCRIPT_PREFIXES:
        if name.startswith(prefix):
            return families
    return {"sd1", "sd2"} if name in SD_SCRIPTS else None


def _family_of(ctx: Context, path: Path) -> Family | Result:
    """The family of the local base model, or a skip when it cannot be read without unpickling."""
    if path.is_dir():
        return classify_folder(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return Result.skip(f"{path.name} is a pickle: its family is not read (lorasetup never unpickles)")
    header = _header(ctx, path)
    return classify({name: info.shape for name, info in header.tensors.items()})


def _wrong_script(ctx: Context, family: Family, label: str, details: list[str]) -> Result:
    """A family the entry script does not train: the script that does, set where the Target's `script` lives
    (lorasetup.toml or [tool.lorasetup], --yes); a hint when the checkout has no such script or the value comes
    from a flag."""
    script, right = ctx.target.script, FAMILY_SCRIPT.get(family.name or "")
    sd_scripts, data = ctx.target.sd_scripts, {"family": family.name}
    summary = f"{label} model with {script}: the run dies after loading the model (Missing key(s) in state_dict)"
    if not right or (sd_scripts is not None and not (sd_scripts / right).is_file()):
        return Result.fail(summary, details=details, data=data,
                           hint=f"this sd-scripts checkout has no script for {label}; use a base model that {script} "
                                "trains")
    hint = f"train it with {right}: `script = \"{right}\"` in lorasetup.toml or `--script {right}`"
    config = _config_file(ctx)
    source = ctx.target.sources.get("script")
    if config is None or source not in (None, str(config)):
        return Result.fail(summary, details=details, data=data,
                           hint=f"{hint} (script comes from {source or 'the default'}, which lorasetup cannot edit: "
                                f"run again with --script {right})")
    table = ("tool", "lorasetup") if config.name == "pyproject.toml" else ()
    fix, why = try_edit_fix(f'set script = "{right}" in {config} (the run then trains with {right})',
                            [(config, [Change(table, "script", right)])], safe=False)
    return Result.fail(summary, details=details, data=data, fix=fix,
                       hint=hint + (f". Not fixed automatically: {why}" if why else ""))


def _config_file(ctx: Context) -> Path | None:
    """The lorasetup.toml or pyproject.toml this Target was read from, if any."""
    for origin in ctx.target.sources.values():
        path = Path(origin)
        if path.name in ("lorasetup.toml", "pyproject.toml") and path.is_absolute() and path.is_file():
            return path
    return None


def _prediction_mismatch(ctx: Context, family: Family, label: str, details: list[str]) -> Result | None:
    """--v2 and --v_parameterization against what the model is (SD2, v-prediction)."""
    args, script, data = train_args(ctx), ctx.target.script, {"family": family.name}
    if family.name == "sd2" and not args.on("v2"):
        return Result.fail(f"SD2.x model without --v2: {script} builds an SD1 model and dies loading the weights",
                           details=details, hint="add `v2 = true` to the training config (and "
                                                 "`v_parameterization = true` for 768-v models)", data=data)
    if family.name == "sd1" and args.on("v2"):
        return Result.fail(f"SD1.x model with --v2 ({args.place('v2')}): the run dies loading the weights",
                           details=details, hint=f"remove v2 from {args.place('v2')}", data=data)
    if family.v_prediction is not None and family.v_prediction != args.on("v_parameterization"):
        want = "needs" if family.v_prediction else "must not have"
        return Result.fail(f"{label} {'v-prediction' if family.v_prediction else 'epsilon'} model {want} "
                           "--v_parameterization: the run trains but the LoRA learns the wrong target",
                           details=details + ["scheduler/scheduler_config.json prediction_type"],
                           hint=f"{'add' if family.v_prediction else 'remove'} `v_parameterization = true` in "
                                "the training config", data=data)
    return None


@check("model.family", "the model family fits the entry script", tags=("preflight",),
       requires=("model.file",),
       fixes="sets `script` to the family's entry script in lorasetup.toml / [tool.lorasetup] (--yes); for --script "
             "on the command line it prints the corrected command")
def model_family(ctx: Context) -> Result:
    path, hub_id = base_model(ctx)
    if path is None or hub_id or not path.exists():
        return Result.skip("no local base model to classify")
    family = _family_of(ctx, path)
    if isinstance(family, Result):
        return family
    script = ctx.target.script
    details = [f"evidence: {family.evidence}"]
    if family.name is None:
        return Result.warn(f"cannot tell the family of {path.name}; not checked against {script}", details=details)
    label = FAMILY_LABELS[family.name]
    if family.name == "lora":
        return Result.fail(f"{path.name} is a LoRA, not a base model: the run dies while loading it",
                           details=details, hint=f"set {BASE_MODEL_ARG} to the checkpoint this LoRA is trained on; "
                                                 "pass a LoRA to continue from with --network_weights")
    if family.in_channels not in (None, 4):
        return Result.fail(f"{path.name} is a {label} model with {family.in_channels} input channels "
                           "(inpainting or instruct): the run dies loading it into a 4-channel U-Net",
                           details=details, hint="train on the base (non-inpainting) release of this model")
    wanted = script_families(script)
    data = {"family": family.name}
    if wanted is None:
        return Result.ok(f"{label} ({path.name}); lorasetup does not know which family {script} trains",
                         details=details, data=data)
    if family.name not in wanted:
        return _wrong_script(ctx, family, label, details)
    mismatch = _prediction_mismatch(ctx, family, label, details)
    if mismatch is not None:
        return mismatch
    if family.name == "sd2" and family.v_prediction is None:
        details.append("768-v SD2 models also need --v_parameterization; 512-base ones must not have it "
                       "(a single file does not say which it is)")
    return Result.ok(f"{label} model, trained by {script}", details=details, data=data)


# ---- tokenizer -------------------------------------------------------------------------------------------

TOKENIZER_FILES = {"CLIPTokenizer": (("vocab.json", "merges.txt"),),
                   "T5TokenizerFast": (("tokenizer.json",), ("spiece.model",))}
ANY_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json",), ("spiece.model",), ("tokenizer.model",))


@dataclass(frozen=True)
class TokenizerSpec:
    """One `_load_tokenizer(cls, model_id, subfolder=...)` call of the script's tokenize strategy."""

    cls: str
    model_id: str
    subfolder: str | None = None


def _strategy_call(sd_scripts: Path, script: str) -> tuple[str, str] | None:
    """The `strategy_<x>.<Y>TokenizeStrategy(...)` the entry script builds: (module, class)."""
    try:
        tree = ast.parse(read_source(sd_scripts / script))
    except (FileProblem, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id.startswith("strategy_") \
                and node.func.attr.endswith("TokenizeStrategy"):
            return node.func.value.id, node.func.attr
    return None


def _strategy_init(sd_scripts: Path, module: str, cls: str) -> tuple[ast.FunctionDef, dict[str, str]] | None:
    """The strategy class's `__init__` in library/<module>.py, and that module's string constants."""
    try:
        tree = ast.parse(read_source(sd_scripts / "library" / f"{module}.py"))
    except (FileProblem, SyntaxError, ValueError):
        return None
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
              for t in n.targets if isinstance(t, ast.Name)}
    found = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    init = next((n for n in found.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None) \
        if found else None
    return (init, consts) if init else None


def _load_calls(statements: list[ast.stmt], consts: Mapping[str, str], flags: Mapping[str, bool]
                ) -> list[TokenizerSpec]:
    """Every `_load_tokenizer(cls, model_id, subfolder=...)` the statements run; `if <flag>:` follows `flags`."""
    def value(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return consts.get(node.id) if isinstance(node, ast.Name) else None

    specs: list[TokenizerSpec] = []
    for stmt in statements:
        if isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and stmt.test.id in flags:
            specs += _load_calls(stmt.body if flags[stmt.test.id] else stmt.orelse, consts, flags)
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "_load_tokenizer" and len(node.args) >= 2:
                model_id = value(node.args[1])
                sub = next((value(k.value) for k in node.keywords if k.arg == "subfolder"), None)
                if model_id:
                    specs.append(TokenizerSpec(ast.unparse(node.args[0]), model_id, sub))
    return specs


def tokenizer_specs(sd_scripts: Path, script: str, flags: Mapping[str, bool]) -> list[TokenizerSpec] | None:
    """The tokenizers the entry script loads, read from its `strategy_*.<X>TokenizeStrategy(...)` call and
    that class's `_load_tokenizer` calls in library/strategy_*.py; `if v2:` branches follow `flags`.
    None when the script does not load tokenizers that way."""
    call = _strategy_call(sd_scripts, script)
    found = _strategy_init(sd_scripts, *call) if call else None
    if found is None:
        return None
    init, consts = found
    return _load_calls(init.body, consts, flags) or None


def _env_true(environ: Mapping[str, str], *names: str) -> str | None:
    """The first of `names` set to a true value, as huggingface_hub's _is_true reads it."""
    return next((n for n in names if environ.get(n, "").upper() in ("1", "ON", "YES", "TRUE")), None)


def hub_cache(environ: Mapping[str, str]) -> Path:
    """Where transformers looks for Hub files (transformers/utils/hub.py, huggingface_hub/constants.py)."""
    for name in ("TRANSFORMERS_CACHE", "PYTORCH_TRANSFORMERS_CACHE", "PYTORCH_PRETRAINED_BERT_CACHE",
                 "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if environ.get(name):
            return Path(os.path.expandvars(environ[name])).expanduser()
    home = environ.get("HF_HOME") or str(Path(environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def cached_snapshot(cache: Path, model_id: str) -> Path | None:
    """The snapshot folder of `model_id`'s `main` revision in the Hub cache, if there is one."""
    repo = cache / ("models--" + model_id.replace("/", "--"))
    try:
        revision = read_source(repo / "refs" / "main").strip()
    except FileProblem:
        return None
    snapshot = repo / "snapshots" / revision
    return snapshot if snapshot.is_dir() else None


def tokenizer_problem(folder: Path, cls: str, max_token_length: Any) -> str | None:
    """What keeps `cls.from_pretrained(folder)` from working as sd-scripts uses it, or None."""
    alternatives = TOKENIZER_FILES.get(cls, ANY_TOKENIZER_FILES)
    if not any(all((folder / f).is_file() for f in files) for files in alternatives):
        return f"{folder} lacks {' or '.join(' + '.join(files) for files in alternatives)}"
    if cls == "CLIPTokenizer" and max_token_length in (None, ""):
        config = json_object(folder / "tokenizer_config.json") or {}
        if not isinstance(config.get("model_max_length"), int) or config["model_max_length"] > 10_000:
            # library/strategy_sd.py: max_length = tokenizer.model_max_length when --max_token_length is unset
            return (f"{folder}/tokenizer_config.json has no model_max_length (77): sd-scripts then pads every "
                    "caption to a huge length and dies")
    return None


def _locate_tokenizers(specs: list[TokenizerSpec], cache_dir: Path | None, hub: Path, max_len: Any
                       ) -> tuple[list[str], list[TokenizerSpec], list[str]]:
    """Where each tokenizer loads from without the network: (details, missing specs, broken local copies)."""
    details: list[str] = []
    missing: list[TokenizerSpec] = []
    broken: list[str] = []
    for spec in specs:
        # library/strategy_base.py _load_tokenizer: <cache_dir>/<id with / -> _> first, else from_pretrained(id)
        local = cache_dir / spec.model_id.replace("/", "_") if cache_dir else None
        if local is not None and local.exists():
            problem = tokenizer_problem(local, spec.cls, max_len)
            if problem:
                broken.append(problem)
            else:
                details.append(f"{spec.model_id}: {local} (tokenizer_cache_dir)")
            continue
        snapshot = cached_snapshot(hub, spec.model_id)
        folder = snapshot / spec.subfolder if snapshot and spec.subfolder else snapshot
        if folder is not None and tokenizer_problem(folder, spec.cls, max_len) is None:
            details.append(f"{spec.model_id}: {folder} (Hugging Face cache)")
        else:
            missing.append(spec)
            details.append(f"{spec.model_id}: not in "
                           + (f"{local} nor " if local else "") + f"the Hugging Face cache {hub}")
    return details, missing, broken


@check("model.tokenizer", "the tokenizer(s) load at start, also with the network off", tags=("preflight",),
       requires=("repo.present",),
       fixes="downloads the tokenizer once with the training interpreter, into tokenizer_cache_dir when set (safe)")
def model_tokenizer(ctx: Context) -> Result:
    sd_scripts = ctx.target.sd_scripts
    if sd_scripts is None:
        return Result.skip("no sd-scripts checkout")
    specs = tokenizer_specs(sd_scripts, ctx.target.script, {"v2": train_args(ctx).on("v2")})
    if specs is None:
        return Result.skip(f"{ctx.target.script} does not load its tokenizers through a strategy_* "
                           "_load_tokenizer call; not checked")
    offline = _env_true(os.environ, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    cache_dir_raw = train_args(ctx).get("tokenizer_cache_dir")
    cache_dir = Path(str(cache_dir_raw)).expanduser() if cache_dir_raw else None
    details, missing, broken = _locate_tokenizers(specs, cache_dir, hub_cache(os.environ),
                                                  train_args(ctx).get("max_token_length"))
    if broken:
        return Result.fail(f"tokenizer cache unusable: {broken[0]}", details=broken[1:] + details,
                           hint="delete that folder (sd-scripts then fetches the tokenizer again and saves it "
                                "there) or add the missing file")
    if not missing:
        return Result.ok(f"{len(specs)} tokenizer(s) found locally; they load with the network off",
                         details=details)
    fix = _download_fix(ctx, missing, cache_dir)
    names = ", ".join(s.model_id for s in missing)
    if offline:
        return Result.fail(f"{names} not available offline ({offline} is set): the run dies at start with "
                           f"\"Can't load tokenizer for '{missing[0].model_id}'\"", details=details,
                           hint=f"download it once with the network on (see the fix), or unset {offline}", fix=fix)
    return Result.warn(f"{names} will be fetched from the Hugging Face Hub at start; without the network the run "
                       f"dies with \"Can't load tokenizer for '{missing[0].model_id}'\"", details=details,
                       hint="download it now so the run works offline: lorasetup bootstrap --fix", fix=fix)


def _download_fix(ctx: Context, specs: list[TokenizerSpec], cache_dir: Path | None) -> Fix:
    """Pre-download the tokenizers with the training interpreter, into tokenizer_cache_dir when it is set."""
    lines = []
    for spec in specs:  # double-quoted Python strings, so the shell-quoted command reads plainly
        sub = f", subfolder={json.dumps(spec.subfolder)}" if spec.subfolder else ""
        load = f"transformers.{spec.cls}.from_pretrained({json.dumps(spec.model_id)}{sub})"
        target = str(cache_dir / spec.model_id.replace("/", "_")) if cache_dir else None
        lines.append(f"{load}.save_pretrained({json.dumps(target)})" if target else load)
    code = "import transformers; " + "; ".join(lines)
    argv = [str(ctx.target.python_exe), "-c", code]

    def apply() -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FixError(f"downloading the tokenizer failed: {exc}") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise FixError(f"downloading the tokenizer failed: {last}")
    where = f"into {cache_dir}" if cache_dir else "into the Hugging Face cache"
    return Fix(description=f"download {', '.join(s.model_id for s in specs)} {where} (a few MB)",
               commands=[shlex.join(argv)], apply=apply, safe=True)

