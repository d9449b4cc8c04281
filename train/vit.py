"""Train vit: `accelerate launch train/vit.py [--config FILE] [key=value ...]` (or plain `python`).

Without --config it uses configs/vit.yaml. Processes, mixed precision and DeepSpeed come from
`accelerate launch` (see launch/); what to train comes from the config.
"""

from mlic.cli import train_entry

if __name__ == "__main__":
    train_entry("vit")
