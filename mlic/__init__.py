"""mlic: distributed multi-label image classification (CNN, ResNet, DenseNet, ViT) on Accelerate."""

__version__ = "0.1.0"
