"""Training and fine-tuning for trained invariance (SPEC section 6).

`fit` trains a model with AdamW and cosine decay (the study's batch 256, lr
1e-3, weight decay 0.01), optionally passing every training batch through a
fresh draw of a defense, with validation accuracy, a checkpoint per epoch, a
best-on-validation checkpoint and exact resume. `finetune` is `fit` from
trained variables with a defense required: the trained-invariance copies
of the study.

  model, variables = jaxdef.models.small_resnet(key=jax.random.key(0))
  base = train.fit(model, variables, (x_train, y_train), (x_val, y_val), epochs=8,
                   workdir="runs/models/base")
  tuned = train.finetune(model, base.variables, (x_train, y_train), (x_val, y_val),
                         defense=jaxdef.defenses.randomized_smoothing(0.25), epochs=3,
                         learning_rate=3e-4, workdir="runs/models/rs0.25")

`evaluate` gives clean, one-draw defended and majority-vote accuracies;
`load_checkpoint` reads an epoch checkpoint (``epoch_003.msgpack``);
``best.msgpack`` is plain variables for `jaxdef.models.load_variables`.
`fashion_models` trains once, then loads, the study's Fashion-MNIST pair
(clean small ResNet and its randomized-smoothing fine-tuned copy).
"""

from jaxdef.train._checkpoint import Checkpoint
from jaxdef.train._checkpoint import CorruptCheckpointError
from jaxdef.train._checkpoint import epoch_path
from jaxdef.train._checkpoint import list_checkpoints
from jaxdef.train._checkpoint import load_checkpoint
from jaxdef.train._eval import evaluate
from jaxdef.train._fashion import FashionModels
from jaxdef.train._fashion import fashion_models
from jaxdef.train._fashion import fashion_split
from jaxdef.train._loop import BUILTIN_METRICS
from jaxdef.train._loop import FitResult
from jaxdef.train._loop import finetune
from jaxdef.train._loop import fit
from jaxdef.train._optim import learning_rate_schedule
from jaxdef.train._optim import optimizer

__all__ = (
    "BUILTIN_METRICS",
    "Checkpoint",
    "CorruptCheckpointError",
    "FashionModels",
    "FitResult",
    "epoch_path",
    "evaluate",
    "fashion_models",
    "fashion_split",
    "finetune",
    "fit",
    "learning_rate_schedule",
    "list_checkpoints",
    "load_checkpoint",
    "optimizer",
)
