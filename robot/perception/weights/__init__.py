"""Shipped perception weights (safetensors, the model config in the file's metadata) and the model card."""
