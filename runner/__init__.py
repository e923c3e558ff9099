"""recipe-runner: declarative fine-tuning recipes expanded into axolotl, accelerate and lm-eval runs."""

__version__ = "0.1.0"
