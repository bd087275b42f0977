"""Student families beyond the basic ones, written in plain torch (torchvision does not import here)."""
