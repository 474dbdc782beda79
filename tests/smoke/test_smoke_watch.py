"""The output parser of the smoke run, on text recorded from a real sd-scripts run and on the shapes it
takes: carriage-return tqdm updates, Rich records wrapped at 80 columns, tracebacks glued to a bar."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lorasetup.sd.run.watch import TRACEBACK_MAX_S, TRACEBACK_SETTLE_S, Watch

# Recorded from `accelerate launch train_network.py` (sd-scripts 48d368fa) on a random SD1.5 at 256 px, CPU.
REAL_RUN = (
    "2026-11-26 11:40:26 INFO     unet dtype: torch.float32,    train_network.py:1347\n"
    "                             device: cpu                                        \n"
    "\rsteps:   0%|          | 0/5 [00:00<?, ?it/s]\nepoch 1/1\n\n"
    "2026-11-26 11:40:27 INFO     epoch is incremented.             train_util.py:784\n"
    "                             current_epoch: 0, epoch: 1                         \n"
    "\rsteps:  20%|██        | 1/5 [00:09<00:39,  9.85s/it]"
    "\rsteps:  20%|██        | 1/5 [00:09<00:39,  9.85s/it, avr_loss=1.14]"
    "\rsteps:  40%|████      | 2/5 [00:21<00:32, 10.74s/it, avr_loss=1.14]"
    "\rsteps:  40%|████      | 2/5 [00:21<00:32, 10.74s/it, avr_loss=1.15]"
    "\rsteps:  60%|██████    | 3/5 [00:33<00:22, 11.23s/it, avr_loss=1.15]"
    "\rsteps:  60%|██████    | 3/5 [00:33<00:22, 11.23s/it, avr_loss=1.16]"
    "\rsteps:  80%|████████  | 4/5 [00:42<00:10, 10.69s/it, avr_loss=1.16]"
    "\rsteps:  80%|████████  | 4/5 [00:42<00:10, 10.69s/it, avr_loss=1.16]"
    "\rsteps: 100%|██████████| 5/5 [00:51<00:00, 10.21s/it, avr_loss=1.16]"
    "\rsteps: 100%|██████████| 5/5 [00:51<00:00, 10.21s/it, avr_loss=1.17]\n"
    "saving checkpoint: helper6-build/raw1/raw.safetensors\n"
    "2026-11-26 11:41:18 INFO     model saved.                  train_network.py:1729\n"
)


def parse(text: str, chunks: list[int] | None = None) -> Watch:
    watch = Watch(0.0)
    pos = 0
    for size in chunks or [len(text)]:
        watch.feed(text[pos:pos + size], 1.0)
        pos += size
    watch.feed(text[pos:], 1.0)
    watch.finish(1.0)
    return watch


def test_real_run_gives_each_steps_loss():
    watch = parse(REAL_RUN)
    assert watch.total == 5 and watch.steps_done == 5
    assert watch.loss == {1: 1.14, 2: 1.15, 3: 1.16, 4: 1.16, 5: 1.17}
    assert watch.nonfinite is None and watch.stop_reason(2.0) is None and watch.real_error() is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=90), max_size=40))
def test_any_chunking_parses_the_same(cuts):
    watch = parse(REAL_RUN, cuts)
    assert watch.loss == {1: 1.14, 2: 1.15, 3: 1.16, 4: 1.16, 5: 1.17}
    assert watch.steps_done == 5 and watch.real_error() is None


def test_nan_in_an_unterminated_update_stops_at_once():
    watch = Watch(0.0)
    watch.feed("\rsteps:   0%|          | 0/5 [00:00<?, ?it/s]\n", 1.0)
    watch.feed("\rsteps:  20%|██        | 1/5 [00:09<00:39,  9.85s/it, avr_loss=1.14]", 2.0)
    assert watch.stop_reason(2.0) is None
    watch.feed("\rsteps:  40%|████      | 2/5 [00:21<00:32, 10.74s/it, avr_loss=nan]", 3.0)
    assert watch.nonfinite == (2, "nan") and watch.stop_reason(3.0) == "nonfinite"


def test_inf_and_huge_finite_losses():
    watch = parse("\rsteps:  20%|█| 1/5 [00:01<00:04, 1.0s/it, avr_loss=1e+30]"
                  "\rsteps:  40%|█| 2/5 [00:02<00:03, 1.0s/it, avr_loss=inf]")
    assert watch.loss[1] == 1e30 and watch.nonfinite == (2, "inf")


def test_validation_bars_are_not_training_steps():
    watch = parse("\rsteps:  20%|█| 1/5 [00:01<00:04, 1.0s/it, avr_loss=0.5]"
                  "\rvalidation steps:  50%|█| 4/8 [00:01<00:01, 4.0it/s, val_epoch_avg_loss=nan]\n")
    assert watch.steps_done == 1 and watch.nonfinite is None


def test_traceback_glued_to_a_bar_and_the_launchers_own_traceback():
    watch = parse(
        "\rsteps:  20%|██        | 1/5 [00:09<00:39,  9.85s/it, avr_loss=1.14]Traceback (most recent call last):\n"
        '  File "/x/train_network.py", line 1480, in train\n    loss.backward()\n    ^^^^^^^^^^^^^^^\n'
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "Traceback (most recent call last):\n  File \"/v/bin/accelerate\", line 8, in <module>\n"
        "subprocess.CalledProcessError: Command '['/v/bin/python', 'train_network.py']' returned non-zero exit "
        "status 1.\n")
    assert watch.real_error() == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert watch.steps_done == 1


def test_chained_exceptions_give_the_last_one():
    watch = parse("Traceback (most recent call last):\n  File \"a.py\", line 1\nKeyError: 'x'\n\n"
                  "During handling of the above exception, another exception occurred:\n\n"
                  "Traceback (most recent call last):\n  File \"a.py\", line 3\nValueError: no x\n")
    assert watch.real_error() == "ValueError: no x"


def test_traceback_stop_waits_for_a_chained_traceback_then_stops():
    watch = Watch(0.0)
    watch.feed("Traceback (most recent call last):\n  File \"a.py\", line 1, in <module>\n", 10.0)
    assert watch.stop_reason(10.2) is None
    assert watch.stop_reason(10.0 + TRACEBACK_MAX_S) == "traceback"  # never completed: stopped anyway
    watch.feed("RuntimeError: boom\n", 10.3)
    assert watch.stop_reason(10.3 + TRACEBACK_SETTLE_S / 2) is None
    assert watch.stop_reason(10.3 + TRACEBACK_SETTLE_S) == "traceback"


def test_rank_prefixed_traceback():
    watch = parse("[rank0]: Traceback (most recent call last):\n[rank0]:   File \"t.py\", line 2, in <module>\n"
                  "[rank0]: RuntimeError: Expected all tensors to be on the same device\n")
    assert watch.real_error() == "RuntimeError: Expected all tensors to be on the same device"


def test_no_data_found_wrapped_across_rich_lines():
    # a narrow message column breaks the phrase itself; the record's lines are joined before matching
    watch = parse("2026-11-26 11:39:50 ERROR    No data                   train_network.py:576\n"
                  "                             found. Please verify arguments\n"
                  "                             (train_data_dir must be the parent)\n"
                  "steps: nothing after\n")
    assert watch.no_data == "No data found. Please verify arguments (train_data_dir must be the parent)"
    assert watch.stop_reason(2.0) == "no-data"


def test_error_record_is_the_error_line_without_a_traceback():
    watch = parse(
        "                    INFO     load StableDiffusion checkpoint: train_util.py:5530\n"
        "2026-11-26 11:40:03 ERROR    model is not found as a file or  train_util.py:5540\n"
        "                             in Hugging Face, perhaps file                      \n"
        "                             name is wrong?                                     \n"
        "accelerate: exit 1\n")
    assert watch.real_error() == "model is not found as a file or in Hugging Face, perhaps file name is wrong?"


def test_timing_excludes_the_first_step_from_seconds_per_step():
    watch = Watch(0.0)
    watch.feed("\rsteps:   0%| | 0/3 [00:00<?, ?it/s]", 30.0)
    watch.feed("\rsteps:  33%| | 1/3 [00:05<00:10, 5.0s/it, avr_loss=0.5]", 35.0)
    watch.feed("\rsteps:  67%| | 2/3 [00:07<00:02, 3.5s/it, avr_loss=0.5]", 37.0)
    watch.feed("\rsteps: 100%| | 3/3 [00:09<00:00, 3.0s/it, avr_loss=0.5]", 39.0)
    assert watch.timing() == {"load_s": 30.0, "first_step_s": 5.0, "s_per_step": 2.0}
