"""Pretrained weights: PyTorch state dicts (torchvision, timm; .pth without PyTorch, .safetensors)
imported into cnn weights directories and exported back."""
