"""Image classifiers in Flax, and weights converted from PyTorch.

* `resnet`: torchvision's ImageNet ResNet-18/34/50 (and 101/152), exact
  topology and parameter layout; `from_torchvision` converts its weights.
* `cifar_resnet`: the CIFAR ResNet-110 of Cohen et al. (2019);
  `from_cohen_checkpoint` converts their randomized-smoothing checkpoints.
* `small_resnet`: a small ResNet for 28x28 Fashion-MNIST on a CPU.

Every constructor returns ``(model, variables)``; models take NHWC float
images in [0, 1] and normalise inside. `logits_fn` turns a model into the
pure ``images -> logits`` function the attacks and `StochasticClassifier`
consume; models with stochastic activation pruning (``activation="sap"``)
use `stochastic_logits_fn` (``(key, images) -> logits``) instead. `sap`
and `kwta` are the activation-level defenses themselves. `save_variables`
and `load_variables` store converted weights (msgpack, no pickle).
"""

from jaxdef.models._activations import ACTIVATIONS
from jaxdef.models._activations import kwta
from jaxdef.models._activations import sap
from jaxdef.models._apply import logits_fn
from jaxdef.models._apply import stochastic_logits_fn
from jaxdef.models._convert import COHEN_ARCHS
from jaxdef.models._convert import from_cohen_checkpoint
from jaxdef.models._convert import from_torchvision
from jaxdef.models._io import load_variables
from jaxdef.models._io import save_variables
from jaxdef.models._resnet import CIFAR_MEAN
from jaxdef.models._resnet import CIFAR_STD
from jaxdef.models._resnet import IMAGENET_MEAN
from jaxdef.models._resnet import IMAGENET_STD
from jaxdef.models._resnet import BasicBlock
from jaxdef.models._resnet import Bottleneck
from jaxdef.models._resnet import ResNet
from jaxdef.models._resnet import cifar_resnet
from jaxdef.models._resnet import resnet
from jaxdef.models._resnet import small_resnet

__all__ = (
    "ACTIVATIONS",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "COHEN_ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "cifar_resnet",
    "from_cohen_checkpoint",
    "from_torchvision",
    "kwta",
    "load_variables",
    "logits_fn",
    "resnet",
    "sap",
    "save_variables",
    "small_resnet",
    "stochastic_logits_fn",
)
