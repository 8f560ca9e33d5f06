"""ID loss (IRRA): one linear classifier over identities, shared by the image and text features."""
import torch.nn as nn
import torch.nn.functional as F

from . import register_loss


@register_loss("ID")
class IdentityLoss(nn.Module):
    reduction = "mean"

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, image_feats, text_feats, pids):
        return (F.cross_entropy(self.classifier(image_feats.float()), pids, reduction="none")
                + F.cross_entropy(self.classifier(text_feats.float()), pids, reduction="none"))
