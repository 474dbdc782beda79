"""The model gate on files written here: tiny safetensors with each family's tensor names, truncated copies,
git-lfs pointers, pickles (never opened), diffusers folders, tokenizer caches."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from lorasetup.checks.model.checks import model_family, model_file, model_tokenizer, tokenizer_specs
from lorasetup.engine.context import Context
from lorasetup.engine.result import Status
from lorasetup.engine.target import Target
from lorasetup.sd.safetensors_header import HeaderError, nonfinite_count, read_header, tensor_values

SD1 = {"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 8),
       "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
FAMILIES = {
    "sd1": SD1,
    "sd2": {"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (12, 4),
            "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)},
    "sdxl": {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (8,),
             "conditioner.embedders.1.model.ln_final.weight": (8,),
             "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)},
    "sdxl-refiner": {"conditioner.embedders.0.model.ln_final.weight": (8,)},
    "flux": {"double_blocks.0.img_attn.qkv.weight": (6, 2)},
    "sd3": {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (6, 2)},
    "lora": {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8)},
    "unet-only-sd2": {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)},
    "inpainting": {**SD1, "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)},
    "unknown": {"some.other.weight": (2, 2)},
}
STRATEGY_SD = '''
TOKENIZER_ID = "openai/clip-vit-large-patch14"
V2_STABLE_DIFFUSION_ID = "stabilityai/stable-diffusion-2"

class SdTokenizeStrategy(TokenizeStrategy):
    def __init__(self, v2, max_length, tokenizer_cache_dir=None):
        if v2:
            self.tokenizer = self._load_tokenizer(CLIPTokenizer, V2_STABLE_DIFFUSION_ID, subfolder="tokenizer",
                                                  tokenizer_cache_dir=tokenizer_cache_dir)
        else:
            self.tokenizer = self._load_tokenizer(CLIPTokenizer, TOKENIZER_ID, tokenizer_cache_dir=tokenizer_cache_dir)
'''
TRAIN_NETWORK = "from library import strategy_sd\n\ndef get(args):\n    return strategy_sd.SdTokenizeStrategy(" \
                "args.v2, args.max_token_length, args.tokenizer_cache_dir)\n"
REAL_SD_SCRIPTS = Path.home() / "bed" / "sd-scripts"


def write_model(path: Path, names: dict[str, tuple[int, ...]], dtype: type = np.float16) -> Path:
    save_file({name: np.zeros(shape, dtype=dtype) for name, shape in names.items()}, str(path),
              metadata={"format": "pt"})
    return path


@pytest.fixture
def sd_tree(tmp_path: Path) -> Path:
    root = tmp_path / "sd-scripts"
    for rel, text in {"train_network.py": TRAIN_NETWORK, "sdxl_train_network.py": "", "library/__init__.py": "",
                      "library/train_util.py": "", "library/strategy_sd.py": STRATEGY_SD,
                      "networks/lora.py": ""}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def ctx_for(root: Path, base: Path | None = None, script: str = "train_network.py", args: list[str] = ()) -> Context:
    return Context(Target(kohya_root=root, base_model=base, script=script, train_args=list(args)))


@pytest.mark.parametrize("family, script, args, status, words", [
    ("sd1", "train_network.py", [], Status.OK, "SD1.x model, trained by train_network.py"),
    ("sd1", "train_network.py", ["--v2"], Status.FAIL, "SD1.x model with --v2"),
    ("sd2", "train_network.py", [], Status.FAIL, "SD2.x model without --v2"),
    ("sd2", "train_network.py", ["--v2"], Status.OK, "SD2.x model"),
    ("unet-only-sd2", "train_network.py", ["--v2"], Status.OK, "SD2.x model"),
    ("sdxl", "train_network.py", [], Status.FAIL, "SDXL base model with train_network.py"),
    ("sdxl", "sdxl_train_network.py", [], Status.OK, "SDXL base model"),
    ("sdxl-refiner", "sdxl_train_network.py", [], Status.FAIL, "SDXL refiner model with sdxl_train_network.py"),
    ("flux", "train_network.py", [], Status.FAIL, "FLUX.1 model with train_network.py"),
    ("sd3", "sdxl_train_network.py", [], Status.FAIL, "SD3 model with sdxl_train_network.py"),
    ("lora", "train_network.py", [], Status.FAIL, "is a LoRA, not a base model"),
    ("inpainting", "train_network.py", [], Status.FAIL, "9 input channels"),
    ("unknown", "train_network.py", [], Status.WARN, "cannot tell the family"),
])
def test_family_against_script(sd_tree, tmp_path, family, script, args, status, words):
    path = write_model(tmp_path / f"{family}.safetensors", FAMILIES[family])
    result = model_family(ctx_for(sd_tree, path, script, args))
    assert result.status is status and words in result.summary, result


def test_sdxl_with_train_network_names_the_right_script(sd_tree, tmp_path):
    result = model_family(ctx_for(sd_tree, write_model(tmp_path / "x.safetensors", FAMILIES["sdxl"])))
    assert "sdxl_train_network.py" in result.hint and "Missing key(s)" in result.summary


def test_real_random_sd15_checkpoint_when_present():
    """The randomly initialised SD1.5 built for the end-to-end run (docs in the issue note), when on disk."""
    model = Path.home() / "bed" / "models" / "sd15-random.safetensors"
    if not model.is_file() or not REAL_SD_SCRIPTS.is_dir():
        pytest.skip("no local SD1.5 checkpoint / sd-scripts checkout on this machine")
    ctx = ctx_for(REAL_SD_SCRIPTS, model)
    assert model_file(ctx).status is Status.OK
    assert model_family(ctx).data == {"family": "sd1"}


def test_sane_file_and_base_model_from_the_training_config(sd_tree, tmp_path):
    path = write_model(tmp_path / "m.safetensors", SD1)
    config = tmp_path / "train.toml"
    config.write_text(f'[model]\npretrained_model_name_or_path = "{path}"\n')
    result = model_file(Context(Target(kohya_root=sd_tree, train_config=config)))
    assert result.status is Status.OK and "2 tensors" in result.summary


def test_truncated_download(tmp_path, sd_tree):
    path = write_model(tmp_path / "m.safetensors", {"a": (64, 64), "b": (64, 64)})
    path.write_bytes(path.read_bytes()[:-5000])
    result = model_file(ctx_for(sd_tree, path))
    assert result.status is Status.FAIL and "truncated download" in result.summary
    assert "download it again" in result.hint


def test_git_lfs_pointer(tmp_path, sd_tree):
    path = tmp_path / "m.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 2132625150\n")
    result = model_file(ctx_for(sd_tree, path))
    assert result.status is Status.FAIL and "git-lfs pointer of a 2.13 GB file" in result.summary
    assert "git lfs pull" in result.hint


def test_header_that_is_not_json(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes((12).to_bytes(8, "little") + b"{not json!!}" + b"\0" * 10)
    with pytest.raises(HeaderError) as info:
        read_header(path)
    assert info.value.kind == "corrupt"


class _Boom:
    """Unpickling this object would create a file: proof that nothing is ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_are_never_opened(tmp_path, sd_tree):
    marker = tmp_path / "unpickled"
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": _Boom(marker)}, protocol=4))
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(ckpt.read_bytes())
    ckpt_result = model_file(ctx_for(sd_tree, ckpt))
    assert ckpt_result.status is Status.WARN and "PyTorch pickle" in ckpt_result.summary
    assert model_family(ctx_for(sd_tree, ckpt)).status is Status.SKIP
    renamed_result = model_file(ctx_for(sd_tree, renamed))
    assert renamed_result.status is Status.FAIL and "pickle" in renamed_result.summary
    assert not marker.exists()


def test_missing_unset_and_hub_id(tmp_path, sd_tree, monkeypatch):
    assert model_file(ctx_for(sd_tree, tmp_path / "nope.safetensors")).status is Status.FAIL
    unconfigured = model_file(ctx_for(sd_tree))
    assert unconfigured.status is Status.SKIP and "no training run configured" in unconfigured.summary
    unset = model_file(ctx_for(sd_tree, args=["--network_dim", "8"]))
    assert unset.status is Status.FAIL and "no base model set" in unset.summary
    monkeypatch.chdir(tmp_path)
    hub = model_file(ctx_for(sd_tree, args=["--pretrained_model_name_or_path", "runwayml/stable-diffusion-v1-5"]))
    assert hub.status is Status.WARN and "Hugging Face Hub id" in hub.summary


def diffusers_folder(root: Path, cls: str, prediction: str = "epsilon", width: int = 768) -> Path:
    index = {"_class_name": cls, "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None]}
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps(index))
    for part, config in (("unet", {"in_channels": 4, "cross_attention_dim": width}), ("vae", {}), ("text_encoder", {})):
        (root / part).mkdir()
        (root / part / "config.json").write_text(json.dumps(config))
        write_model(root / part / ("model.safetensors" if part == "text_encoder" else
                                   "diffusion_pytorch_model.safetensors"), {"w": (2, 2)})
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    return root


def test_diffusers_folder_parts_and_family(tmp_path, sd_tree):
    folder = diffusers_folder(tmp_path / "sd15", "StableDiffusionPipeline")
    assert model_file(ctx_for(sd_tree, folder)).status is Status.OK
    assert model_family(ctx_for(sd_tree, folder)).data == {"family": "sd1"}
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    broken = model_file(ctx_for(sd_tree, folder))
    assert broken.status is Status.FAIL and any("unet/ has no weights" in d for d in [broken.summary, *broken.details])


def test_v_prediction_folder_needs_v_parameterization(tmp_path, sd_tree):
    folder = diffusers_folder(tmp_path / "sd21", "StableDiffusionPipeline", "v_prediction", 1024)
    without = model_family(ctx_for(sd_tree, folder, args=["--v2"]))
    assert without.status is Status.FAIL and "needs --v_parameterization" in without.summary
    assert model_family(ctx_for(sd_tree, folder, args=["--v2", "--v_parameterization"])).status is Status.OK


def test_header_reader_counts_nonfinite_values_of_each_float_type(tmp_path):
    values = np.array([1.0, np.nan, np.inf, -np.inf, 2.0, 0.0], dtype=np.float32)
    save_file({"f32": values, "f16": values.astype(np.float16), "f64": values.astype(np.float64),
               "ok": np.ones(5, dtype=np.float32), "i": np.arange(4, dtype=np.int64),
               "alpha": np.array(8.0, dtype=np.float16)}, str(tmp_path / "v.safetensors"))
    header = read_header(tmp_path / "v.safetensors")
    counts = {n: nonfinite_count(header.path, info) for n, info in header.tensors.items()}
    assert counts == {"f32": 3, "f16": 3, "f64": 3, "ok": 0, "i": 0, "alpha": 0}
    assert tensor_values(header.path, header.tensors["alpha"]) == [8.0]


def test_header_reader_agrees_with_the_safetensors_library_and_names_what_it_cannot(tmp_path):
    """The safetensors library (a test dependency only: it cannot list a file's tensors without importing torch
    or numpy into the process) reads the same names, dtypes, shapes, metadata and values as the hand-written
    reader; on a truncated file, an lfs pointer and a pickle it only says "incomplete metadata" or "header too
    large", where the reader names the cause."""
    arrays = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3), "f16": np.ones((4,), dtype=np.float16),
              "f64": np.array([1.5]), "i64": np.arange(3, dtype=np.int64), "u8": np.zeros((2, 2), dtype=np.uint8),
              "flag": np.array([True, False])}
    path = tmp_path / "m.safetensors"
    save_file(arrays, str(path), metadata={"ss_network_dim": "4"})
    header = read_header(path)
    with safe_open(str(path), framework="numpy") as theirs:
        assert sorted(header.tensors) == sorted(theirs.keys()) and header.metadata == theirs.metadata()
        for name, info in header.tensors.items():
            array = theirs.get_tensor(name)
            assert info.shape == array.shape and info.end - info.start == array.nbytes, name
    assert tensor_values(path, header.tensors["f32"]) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    path.write_bytes(path.read_bytes()[:-8])
    lfs = tmp_path / "lfs.safetensors"
    lfs.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 2132625894\n")
    pickled = tmp_path / "renamed.safetensors"
    pickled.write_bytes(b"\x80\x02}q\x00." + bytes(64))
    for broken, kind in ((path, "truncated"), (lfs, "lfs-pointer"), (pickled, "pickle")):
        with pytest.raises(SafetensorError):
            safe_open(str(broken), framework="numpy")
        with pytest.raises(HeaderError) as ours:
            read_header(broken)
        assert ours.value.kind == kind


def test_bf16_values_are_read_exactly(tmp_path):
    """numpy has no bfloat16: write BF16 bytes (the top half of each float32) and a hand-made header."""
    f32 = np.array([1.5, -2.0, np.nan], dtype=np.float32)
    data = (f32.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"t": {"dtype": "BF16", "shape": [3], "data_offsets": [0, len(data)]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    info = read_header(path).tensors["t"]
    assert nonfinite_count(path, info) == 1 and tensor_values(path, info)[:2] == [1.5, -2.0]


# ---- tokenizer ---------------------------------------------------------------------------------------------

def clip_tokenizer(folder: Path, max_length: int | None = 77) -> Path:
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({"a": 0, "a</w>": 1, "<|startoftext|>": 2, "<|endoftext|>": 3}))
    (folder / "merges.txt").write_text("")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length} if max_length else {}))
    return folder


@pytest.fixture
def hf_env(tmp_path, monkeypatch) -> Path:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
                 "TRANSFORMERS_CACHE", "PYTORCH_TRANSFORMERS_CACHE", "PYTORCH_PRETRAINED_BERT_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf" / "hub"


def test_tokenizer_cache_dir_works_offline(sd_tree, tmp_path, hf_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip_tokenizer(tmp_path / "tok" / "openai_clip-vit-large-patch14")
    result = model_tokenizer(ctx_for(sd_tree, args=["--tokenizer_cache_dir", str(tmp_path / "tok")]))
    assert result.status is Status.OK and "network off" in result.summary


def test_cache_dir_without_model_max_length_fails(sd_tree, tmp_path, hf_env):
    clip_tokenizer(tmp_path / "tok" / "openai_clip-vit-large-patch14", max_length=None)
    result = model_tokenizer(ctx_for(sd_tree, args=["--tokenizer_cache_dir", str(tmp_path / "tok")]))
    assert result.status is Status.FAIL and "model_max_length" in result.summary
    with_length = model_tokenizer(ctx_for(sd_tree, args=["--tokenizer_cache_dir", str(tmp_path / "tok"),
                                                          "--max_token_length", "225"]))
    assert with_length.status is Status.OK


def test_offline_without_a_cached_tokenizer_fails_with_the_error_the_run_would_give(sd_tree, tmp_path, hf_env,
                                                                                     monkeypatch):
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    result = model_tokenizer(ctx_for(sd_tree, args=["--tokenizer_cache_dir", str(tmp_path / "tok")]))
    assert result.status is Status.FAIL
    assert "Can't load tokenizer for 'openai/clip-vit-large-patch14'" in result.summary
    assert "save_pretrained" in result.fix.commands[0] and str(tmp_path / "tok") in result.fix.commands[0]


def test_online_without_a_cached_tokenizer_warns_and_offers_a_download(sd_tree, hf_env):
    result = model_tokenizer(ctx_for(sd_tree))
    assert result.status is Status.WARN and "fetched from the Hugging Face Hub at start" in result.summary
    assert result.fix.safe and result.fix.commands[0].endswith(
        """-c 'import transformers; transformers.CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")'""")


def test_hf_cache_snapshot_and_the_v2_subfolder(sd_tree, hf_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for model_id, sub in (("openai/clip-vit-large-patch14", None), ("stabilityai/stable-diffusion-2", "tokenizer")):
        repo = hf_env / ("models--" + model_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("abc123")
        clip_tokenizer(repo / "snapshots" / "abc123" / sub if sub else repo / "snapshots" / "abc123")
    assert model_tokenizer(ctx_for(sd_tree)).status is Status.OK
    v2 = model_tokenizer(ctx_for(sd_tree, args=["--v2"]))
    assert v2.status is Status.OK and "stabilityai/stable-diffusion-2" in v2.details[0]


def test_tokenizers_read_from_the_real_checkout_when_present():
    if not REAL_SD_SCRIPTS.is_dir():
        pytest.skip("no sd-scripts checkout at ~/bed/sd-scripts")
    ids = {s: [t.model_id for t in tokenizer_specs(REAL_SD_SCRIPTS, s, {"v2": False})]
           for s in ("train_network.py", "sdxl_train_network.py", "flux_train_network.py")}
    assert ids == {"train_network.py": ["openai/clip-vit-large-patch14"],
                   "sdxl_train_network.py": ["openai/clip-vit-large-patch14",
                                             "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"],
                   "flux_train_network.py": ["openai/clip-vit-large-patch14", "google/t5-v1_1-xxl"]}

