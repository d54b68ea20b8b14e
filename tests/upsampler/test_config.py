"""Upsampler settings from the environment, the child's command line, and answer cleaning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from upsampler_helpers import REPO_ROOT

from inference.upsampler import UpsamplerConfig
from inference.upsampler.launch import child_argv
from inference.upsampler.rewrite import RewriteError, clean_rewrite


def test_environment_variables_configure_the_upsampler(tmp_path):
    """Each UPSAMPLER_* variable lands in its config field and the run directory holds the log."""
    config = UpsamplerConfig.from_env({
        "UPSAMPLER": "1", "UPSAMPLER_MODEL": "org/vl-model", "UPSAMPLER_CMD": "python 'my server.py'",
        "UPSAMPLER_PORT": "8123", "UPSAMPLER_GPUS": "6,7", "UPSAMPLER_GPU_MEMORY": "0.4",
        "UPSAMPLER_MAX_MODEL_LEN": "8192", "UPSAMPLER_MAX_NUM_SEQS": "2",
        "UPSAMPLER_EXTRA_ARGS": "--enforce-eager --dtype bfloat16",
        "UPSAMPLER_TIMEOUT_S": "7.5", "UPSAMPLER_STARTUP_TIMEOUT_S": "60",
    }, run_dir=tmp_path)
    assert config.enabled and config.model == "org/vl-model"
    assert config.command == ["python", "my server.py"]
    assert (config.port, config.gpus, config.gpu_memory_utilization) == (8123, "6,7", 0.4)
    assert (config.max_model_len, config.max_num_seqs) == (8192, 2)
    assert config.extra_args == ["--enforce-eager", "--dtype", "bfloat16"]
    assert (config.request_timeout_s, config.startup_timeout_s) == (7.5, 60.0)
    assert config.log_dir == tmp_path
    defaults = UpsamplerConfig.from_env({})
    assert not defaults.enabled and defaults.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (defaults.port, defaults.gpu_memory_utilization, defaults.gpus) == (0, 0.25, None)


@pytest.mark.parametrize("name, value, expected", [
    ("UPSAMPLER_GPU_MEMORY", "1.5", "gpu_memory_utilization=1.5: expected a fraction in (0, 1]"),
    ("UPSAMPLER_PORT", "eighty", "UPSAMPLER_PORT='eighty': expected an integer"),
    ("UPSAMPLER", "maybe", "UPSAMPLER='maybe': expected 0 or 1"),
    ("UPSAMPLER_CMD", "vllm 'serve", "UPSAMPLER_CMD=\"vllm 'serve\": expected a shell-quoted command line"),
])
def test_bad_environment_values_are_named(name, value, expected):
    """A bad UPSAMPLER_* value fails with a message naming the setting, the value and what was expected."""
    with pytest.raises(ValueError) as caught:
        UpsamplerConfig.from_env({name: value})
    assert expected in str(caught.value)


def test_pixtral_gets_the_mistral_tokenizer():
    """Pixtral-class models are served with --tokenizer-mode mistral, Qwen models without it."""
    pixtral = child_argv(UpsamplerConfig(model="mistralai/Pixtral-12B-2409"), port=9000)
    assert Path(pixtral[0]).name == "vllm" and pixtral[1:3] == ["serve", "mistralai/Pixtral-12B-2409"]
    assert pixtral[pixtral.index("--tokenizer-mode") + 1] == "mistral"
    assert pixtral[pixtral.index("--port") + 1] == "9000"
    assert "--tokenizer-mode" not in child_argv(UpsamplerConfig(), port=9000)


def test_command_override_substitutes_placeholders():
    """An override command gets {model} and {port} filled in and vLLM's flags appended."""
    config = UpsamplerConfig(command=["srv", "--name={model}", "--listen={port}"], model="m/x")
    argv = child_argv(config, port=4321)
    assert argv[:4] == ["srv", "--name=m/x", "--listen=4321", "m/x"]
    assert argv[argv.index("--max-num-seqs") + 1] == "4"


def test_answers_are_cleaned_and_capped():
    """Quotes, labels and extra spaces are stripped, long answers end at a sentence within the cap, empty ones are rejected."""
    assert clean_rewrite('  "Prompt:  A  castle\non a hill."\n', 50) == "A castle on a hill."
    long = "A stone castle stands on a hill above a grey and restless sea. " + "Rain falls " * 30
    cut = clean_rewrite(long, 20)
    assert cut == "A stone castle stands on a hill above a grey and restless sea."
    assert clean_rewrite("Wind moves the grass, the long banners over the gate", 5) == "Wind moves the grass."
    with pytest.raises(RewriteError, match="empty"):
        clean_rewrite('  "" ', 50)


def test_package_import_stays_torch_free():
    """Importing the upsampler package pulls in neither torch nor vllm, so the front stays light."""
    code = ("import sys, inference.upsampler; "
            "print(sorted(m for m in ('torch', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_run_dir_may_be_given_as_text():
    """A log_dir given as text is used as a path."""
    assert UpsamplerConfig(log_dir="runs/x").log_dir == Path("runs/x")
