"""Training: model presets, pretraining with DeepSpeed, SFT and LoRA."""
