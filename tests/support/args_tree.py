"""A small sd-scripts-like tree whose argparse code is written here, in the layout of the real one (entry
scripts building their parsers from library/*_util.py helpers): pure Python, so the args tests can run the real
argparse on it and compare with lorasetup's reading of it."""

from __future__ import annotations

TRAIN_UTIL = '''
import argparse
import ast


def add_sd_models_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--v2", action="store_true")
    parser.add_argument("--v_parameterization", action="store_true")
    parser.add_argument("--pretrained_model_name_or_path", type=str, default=None)


def add_dataset_arguments(parser, support_dreambooth: bool, support_caption: bool, support_caption_dropout: bool):
    parser.add_argument("--train_data_dir", type=str, default=None)
    parser.add_argument("--shuffle_caption", action="store_true")
    parser.add_argument("--caption_extension", type=str, default=".caption")
    parser.add_argument("--color_aug", action="store_true")
    parser.add_argument("--flip_aug", action="store_true")
    parser.add_argument("--random_crop", action="store_true")
    parser.add_argument("--resolution", type=str, default=None)
    parser.add_argument("--cache_latents", action="store_true")
    parser.add_argument("--cache_latents_to_disk", action="store_true")
    parser.add_argument("--enable_bucket", action="store_true")
    parser.add_argument("--min_bucket_reso", type=int, default=256)
    parser.add_argument("--max_bucket_reso", type=int, default=1024)
    parser.add_argument("--bucket_reso_steps", type=int, default=64)
    parser.add_argument("--token_warmup_step", type=float, default=0)
    parser.add_argument("--resize_interpolation", type=str, default=None,
                        choices=["lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area"])
    if support_caption_dropout:
        parser.add_argument("--caption_dropout_rate", type=float, default=0.0)
        parser.add_argument("--caption_tag_dropout_rate", type=float, default=0.0)
    if support_dreambooth:
        parser.add_argument("--reg_data_dir", type=str, default=None)
    if support_caption:
        parser.add_argument("--in_json", type=str, default=None)
        parser.add_argument("--dataset_repeats", type=int, default=1)


def add_training_arguments(parser: argparse.ArgumentParser, support_dreambooth: bool):
    parser.add_argument("--output_dir", type=str, default=None)
    parser.add_argument("--output_name", type=str, default=None)
    parser.add_argument("--save_precision", type=str, default=None, choices=[None, "float", "fp16", "bf16"])
    parser.add_argument("--save_every_n_epochs", type=int, default=None)
    parser.add_argument("--save_every_n_steps", type=int, default=None)
    parser.add_argument("--save_n_epoch_ratio", type=int, default=None)
    parser.add_argument("--save_last_n_epochs", type=int, default=None)
    parser.add_argument("--save_last_n_epochs_state", type=int, default=None)
    parser.add_argument("--save_last_n_steps", type=int, default=None)
    parser.add_argument("--save_last_n_steps_state", type=int, default=None)
    parser.add_argument("--save_state", action="store_true")
    parser.add_argument("--save_state_on_train_end", action="store_true")
    parser.add_argument("--train_batch_size", type=int, default=1)
    parser.add_argument("--max_train_steps", type=int, default=1600)
    parser.add_argument("--max_train_epochs", type=int, default=None)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--full_fp16", action="store_true")
    parser.add_argument("--full_bf16", action="store_true")
    parser.add_argument("--fp8_base", action="store_true")
    parser.add_argument("--logging_dir", type=str, default=None)
    parser.add_argument("--log_with", type=str, default=None, choices=["tensorboard", "wandb", "all"])
    parser.add_argument("--noise_offset", type=float, default=None)
    parser.add_argument("--adaptive_noise_scale", type=float, default=None)
    parser.add_argument("--sample_every_n_steps", type=int, default=None)
    parser.add_argument("--sample_every_n_epochs", type=int, default=None)
    parser.add_argument("--sample_at_first", action="store_true")
    parser.add_argument("--sample_prompts", type=str, default=None)
    parser.add_argument("--zero_stage", type=int, default=2, choices=[0, 1, 2, 3])
    parser.add_argument("--config_file", type=str, default=None)
    if support_dreambooth:
        parser.add_argument("--prior_loss_weight", type=float, default=1.0)


def add_optimizer_arguments(parser: argparse.ArgumentParser):
    def int_or_float(value):
        if value.endswith("%"):
            return float(value[:-1]) / 100.0
        return int(value) if float(value) >= 1 else float(value)

    parser.add_argument("--optimizer_type", type=str, default="")
    parser.add_argument("--use_8bit_adam", action="store_true")
    parser.add_argument("--learning_rate", type=float, default=2.0e-6)
    parser.add_argument("--optimizer_args", type=str, default=None, nargs="*")
    parser.add_argument("--lr_scheduler_args", type=str, default=None, nargs="*")
    parser.add_argument("--lr_warmup_steps", type=int_or_float, default=0)
    parser.add_argument("--fused_backward_pass", action="store_true")


def verify_training_args(args):
    if args.adaptive_noise_scale is not None and args.noise_offset is None:
        raise ValueError("adaptive_noise_scale requires noise_offset / adaptive_noise_scale")


def get_optimizer(args, trainable_params):
    if args.use_8bit_adam:
        assert (
            args.optimizer_type is None or args.optimizer_type == ""
        ), "both option use_8bit_adam and optimizer_type are specified / ..."
    for arg in args.optimizer_args or []:
        key, value = arg.split("=")
        value = ast.literal_eval(value)
    if args.fused_backward_pass:
        assert (
            args.optimizer_type.lower() == "adafactor"
        ), "fused_backward_pass currently only works with optimizer_type Adafactor / ..."


def prepare_accelerator(args):
    if args.log_with in ["tensorboard", "all"] and args.logging_dir is None:
        raise ValueError("logging_dir is required when log_with is tensorboard / ...")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--not_a_training_option")
'''

UTILS = '''
def add_logging_arguments(parser):
    parser.add_argument("--console_log_level", type=str, default=None,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
'''

CONFIG_UTIL = '''
import argparse
from pathlib import Path


def add_config_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--dataset_config", type=Path, default=None)
'''

SDXL_TRAIN_UTIL = '''
def add_sdxl_training_arguments(parser, support_text_encoder_caching: bool = True):
    if support_text_encoder_caching:
        parser.add_argument("--cache_text_encoder_outputs", action="store_true")
        parser.add_argument("--cache_text_encoder_outputs_to_disk", action="store_true")


def verify_sdxl_training_args(args, support_text_encoder_caching: bool = True):
    assert not args.v2, "v2 cannot be enabled in SDXL training / ..."
'''

TRAIN_NETWORK = '''
import argparse

import library.train_util as train_util
from library import config_util
from library.utils import add_logging_arguments


class NetworkTrainer:
    def assert_extra_args(self, args, train_dataset_group, val_dataset_group):
        train_dataset_group.verify_bucket_reso_steps(64)

    def train(self, args):
        train_util.verify_training_args(args)
        if args.cache_latents:
            assert ok, "when caching latents, either color_aug or random_crop cannot be used / ..."
        if args.full_fp16:
            assert (
                args.mixed_precision == "fp16"
            ), "full_fp16 requires mixed precision='fp16' / ..."
        elif args.full_bf16:
            assert args.mixed_precision == "bf16", "full_bf16 requires mixed precision='bf16' / ..."
        if args.fp8_base:
            assert args.mixed_precision != "no", "fp8_base requires mixed precision='fp16' or 'bf16' / ..."
        net_kwargs = {}
        for net_arg in args.network_args or []:
            key, value = net_arg.split("=", 1)
        train_util.get_optimizer(args, [])


def setup_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_logging_arguments(parser)
    train_util.add_sd_models_arguments(parser)
    train_util.add_dataset_arguments(parser, True, False, True)
    train_util.add_training_arguments(parser, True)
    train_util.add_optimizer_arguments(parser)
    config_util.add_config_arguments(parser)
    parser.add_argument("--save_model_as", type=str, default="safetensors", choices=[None, "ckpt", "pt", "safetensors"])
    parser.add_argument("--unet_lr", type=float, default=None)
    parser.add_argument("--text_encoder_lr", type=float, default=None, nargs="*")
    parser.add_argument("--network_module", type=str, default=None)
    parser.add_argument("--network_dim", type=int, default=None)
    parser.add_argument("--network_alpha", type=float, default=1)
    parser.add_argument("--network_args", type=str, default=None, nargs="*")
    parser.add_argument("--network_train_unet_only", action="store_true")
    parser.add_argument("--network_train_text_encoder_only", action="store_true")
    return parser


if __name__ == "__main__":
    parser = setup_parser()
    args = parser.parse_args()
    NetworkTrainer().train(args)
'''

SDXL_TRAIN_NETWORK = '''
import argparse

import train_network
from library import sdxl_train_util, train_util


class SdxlNetworkTrainer(train_network.NetworkTrainer):
    def assert_extra_args(self, args, train_dataset_group, val_dataset_group):
        sdxl_train_util.verify_sdxl_training_args(args)
        if args.cache_text_encoder_outputs:
            assert (
                train_dataset_group.is_text_encoder_output_cacheable()
            ), "when caching Text Encoder output, either caption_dropout_rate, shuffle_caption, token_warmup_step or caption_tag_dropout_rate cannot be used / ..."
        assert (
            args.network_train_unet_only or not args.cache_text_encoder_outputs
        ), "network for Text Encoder cannot be trained with caching Text Encoder outputs / ..."
        train_dataset_group.verify_bucket_reso_steps(32)


def setup_parser() -> argparse.ArgumentParser:
    parser = train_network.setup_parser()
    sdxl_train_util.add_sdxl_training_arguments(parser)
    return parser


if __name__ == "__main__":
    parser = setup_parser()
    args = parser.parse_args()
'''  # noqa: E501 -- sd-scripts' assertion message above is looked up whole, so it stays on one line

FLUX_TRAIN_NETWORK = '''
import argparse

import train_network


class FluxNetworkTrainer(train_network.NetworkTrainer):
    def assert_extra_args(self, args, train_dataset_group, val_dataset_group):
        super().assert_extra_args(args, train_dataset_group, val_dataset_group)
        train_dataset_group.verify_bucket_reso_steps(32)


def setup_parser() -> argparse.ArgumentParser:
    parser = train_network.setup_parser()
    group = parser.add_argument_group("flux")
    for name in ["clip_l", "t5xxl", "ae"]:
        group.add_argument(f"--{name}", type=str, default=None)
    parser.add_argument("--split_mode", action="store_true")
    return parser


if __name__ == "__main__":
    parser = setup_parser()
    args = parser.parse_args()
'''

FINE_TUNE = '''
import argparse

import library.train_util as train_util
import library.config_util as config_util


def setup_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    train_util.add_sd_models_arguments(parser)
    train_util.add_dataset_arguments(parser, False, True, True)
    train_util.add_training_arguments(parser, False)
    train_util.add_optimizer_arguments(parser)
    config_util.add_config_arguments(parser)
    parser.add_argument("--learning_rate_te", type=float, default=None)
    return parser


if __name__ == "__main__":
    parser = setup_parser()
'''

TREE = {
    "train_network.py": TRAIN_NETWORK,
    "sdxl_train_network.py": SDXL_TRAIN_NETWORK,
    "flux_train_network.py": FLUX_TRAIN_NETWORK,
    "fine_tune.py": FINE_TUNE,
    "library/__init__.py": "",
    "library/train_util.py": TRAIN_UTIL,
    "library/utils.py": UTILS,
    "library/config_util.py": CONFIG_UTIL,
    "library/sdxl_train_util.py": SDXL_TRAIN_UTIL,
    "networks/__init__.py": "",
    "networks/lora.py": "RANK = 4\n",
    "networks/lora_flux.py": "RANK = 4\n",
}
