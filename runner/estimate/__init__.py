"""Know before you launch: a recipe's peak memory per GPU, whether it fits, what would make it fit, and its time
and cost, from the model's config.json and the hardware profile, before any GPU is reserved.

- gpus.py: the GPU table (memory, peak bf16 FLOP/s, assumed MFU), the one the schema and MFU use;
- model_config.py: a model's config.json (local dir, GGUF metadata, hub cache, or configs/ kept here);
- meta.py, saved.py: the model built on the meta device: parameter counts, LoRA's trainable count (peft), and
  the activation bytes autograd keeps, measured by running the real forward pass on meta tensors;
- memory.py: peak memory per GPU from those (pure arithmetic; framework assumptions in `Framework`);
- data_size.py, throughput.py: tokens per epoch, steps, time at a stated MFU, cost;
- fit.py, text.py: the typed FitReport for `recipe fit` (text and --json) and `recipe plan`.
"""
