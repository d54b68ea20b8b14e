"""Prompt upsampling: a vision-language model in its own `vllm serve` process rewrites short prompts.

The front imports this package; it must never import torch or vllm. See
`config.py` for the environment variables and memory budgeting.
"""

from inference.upsampler.config import UpsamplerConfig
from inference.upsampler.rewrite import SYSTEM_PROMPT, SYSTEM_PROMPT_VERSION
from inference.upsampler.upsampler import PromptUpsampler, UpsampleResult

__all__ = ["PromptUpsampler", "SYSTEM_PROMPT", "SYSTEM_PROMPT_VERSION", "UpsampleResult",
           "UpsamplerConfig"]
