"""FLQ: federated LoRA fine-tuning of small language models on unequal clients."""

__version__ = "0.1.0"
