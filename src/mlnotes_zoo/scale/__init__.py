"""DDP/ZeRO/FSDP/AMP/activation-checkpointing glue shared by every model."""
