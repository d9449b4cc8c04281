"""Train vit: `accelerate launch train/vit.py [--config FILE] [key=value ...]` (or plain `python`).

Without --config it uses configs/vit.yaml. Processes, mixed precision and DeepSpeed come from
`accelerate launch` (see launch/); what to train comes from the config.
"""

import sys

from mlic.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main("vit"))
