"""xstilts benchmarks: speed and memory against Hugging Face baselines, measured side by side."""
