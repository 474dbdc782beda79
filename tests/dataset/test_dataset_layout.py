"""How lorasetup reads folder names and picks the resolution for `lorasetup init` (lorasetup.sd.dataset.layout)."""

from __future__ import annotations

import pytest

from lorasetup.sd.dataset.layout import bucket_range, choose_resolution, parse_folder_name


@pytest.mark.parametrize("name, parsed", [
    # config_util.extract_dreambooth_params: split on "_", int() of the first token, the rest joined back
    ("10_spyke_plasma_v1", (10, "spyke_plasma_v1")),
    ("1_anime character", (1, "anime character")),
    ("10_", (10, "")),
    ("10", (10, "")),
    (" 5_x", (5, "x")),      # int() allows the blank
    ("0_off", (0, "off")),
    ("-1_x", (-1, "x")),
    ("10spyke", None),       # 'ignore directory without repeats'
    ("10-spyke", None),
    ("img", None),
    ("_10_x", None),
])
def test_folder_names_as_sd_scripts_reads_them(name, parsed):
    assert parse_folder_name(name) == parsed


@pytest.mark.parametrize("sizes, family, resolution", [
    ([(512, 512)] * 3, "sd1", 512),
    ([(1024, 1024)] * 3, "sd1", 512),
    ([(1024, 1024)] * 3, "sdxl", 1024),
    ([(1024, 1024)] * 3, "flux", 1024),
    ([(768, 768)] * 3, "sd2-v", 768),
    ([(1024, 1024), (768, 768), (700, 700)], "sdxl", 768),  # the median: 2 of 3 images reach it
    ([(1024, 1024), (740, 740), (700, 700)], "sdxl", 704),  # down to a multiple of 64
    ([(1024, 1024), (1024, 1024), (700, 700)], "sdxl", 1024),  # most images reach it
    ([(300, 200)], None, 192),
    ([], "sdxl", 1024),
    ([(2048, 2048)], None, 512),
])
def test_resolution_by_family_never_above_most_images(sizes, family, resolution):
    assert choose_resolution(sizes, family)[0] == resolution


def test_bucket_range_is_sd_scripts_default_at_512():
    assert bucket_range(512) == (256, 1024)
    assert bucket_range(1024) == (512, 2048)
    assert bucket_range(192) == (64, 384)
