"""Know before you launch: a recipe's peak memory per GPU, whether it fits, what would make it fit, and its time
and cost, from the model's config.json and the hardware profile, before any GPU is reserved.

gpus.py is the table of GPU models (memory, peak FLOP/s); model_config.py finds a model's config.json;
meta.py builds the model on the meta device to count parameters and measure activation memory; memory.py and
throughput.py are the estimates; fit.py puts them in one typed report for `recipe fit` and `recipe plan`.
"""
