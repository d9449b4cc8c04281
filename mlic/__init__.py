"""mlic: distributed multi-label image classification (CNN, ResNet, DenseNet, ViT) on Accelerate."""

__version__ = "0.1.0"

__all__ = ["load_model"]


def load_model(model_dir, device=None, batch_size: int = 64, workers: int = 4):
    """`mlic.load_model(RUN/model).predict(images)`: see `mlic.serving.predictor.load_model`. Imported on first
    use, so that `import mlic` stays cheap."""
    from mlic.serving.predictor import load_model as load

    return load(model_dir, device, batch_size, workers)
