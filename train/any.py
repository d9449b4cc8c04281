"""Train any registered model: `accelerate launch train/any.py MODEL [--config FILE] [key=value ...]`.

MODEL is a report model (cnn, resnet152, densenet161, vit, ...; default config configs/MODEL.yaml) or
any backbone by library: timm/<architecture> or hf/<hub name or folder> (default configs/finetune.yaml).
"""

import sys

from mlic.cli import train_entry

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    train_entry(sys.argv[1], sys.argv[2:])
