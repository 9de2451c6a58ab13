"""The model zoo: the FuncPipe paper's models, an MLP, and models shaped like the Flax code people
write (a nested LM, its scan-over-layers twin, NNX models), each in a full and a tiny config.

``get(name, **overrides)`` returns a `ModelSpec`: the Flax module, the shape of one input
sample, a synthetic batch maker, the loss and an initialiser. Names, with the number of
pipeline layers (top-level modules) of the full and the ``-tiny`` config:

============  ================================================  ======  ======
name          model                                              layers  tiny
============  ================================================  ======  ======
mlp           MLP 64-256-256-256-10 (digits)                        4       3
resnet18      ResNet-18, 224x224x3, 1000 classes                   10       6
resnet50      ResNet-50                                            18       6
resnet101     ResNet-101                                           35       7
amoebanet18   AmoebaNet-D(18, 256), 224x224x3, 1000 classes        24       9
amoebanet36   AmoebaNet-D(36, 256)                                 42      12
bert-base     BERT-Base (12, 768, 12), seq 128, 2 classes          14       4
bert-large    BERT-Large (24, 1024, 16)                            26       5
lm            decoder-only LM (12, 768, 12) under one `decoder`    15       6
lm-scan       the same, its blocks one `nn.scan` (unrolled)        15       6
nnx-cnn       NNX CNN, 8 Conv-BatchNorm-Dropout blocks (nnx.List)   9       4
nnx-lm        NNX decoder-only LM (12, 768, 12), nnx.List blocks   15       6
============  ================================================  ======  ======

Tiny configs keep the structure (bottlenecks and BatchNorm, two-input normal and reduction
cells, masked attention with dropout 0.1) at narrow widths: 32x32 images and 10 classes for
the image models, sequence length 16 and a 128-token vocabulary for BERT and the LMs (3
blocks), 16x16 images and widths 8-16-16 for the NNX CNN. The LMs' layers are found below their
wrapper (`decoder/embed`, `decoder/block_0`, ...), `lm-scan`'s by unrolling its scan
(`decoder/blocks/0`, ...); the NNX families' `build(key)` returns the module
(`ModelSpec.kind == "nnx"`).

Overrides replace fields of the family's config dataclass (`MLPConfig`, `ResNetConfig`,
`AmoebaNetConfig`, `BertConfig`, `LMConfig`, `CNNConfig`), e.g. ``get("amoebanet18",
filters=64)`` or ``get("bert-base", seq_len=64, dropout=0.0)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypedDict

from jaxpipe.errors import ModelConfigError, UnknownModelError
from jaxpipe.models import amoebanet, bert, lm, mlp, nnx_cnn, nnx_lm, resnet
from jaxpipe.models._spec import ModelSpec, cross_entropy_loss
from jaxpipe.models.amoebanet import AmoebaNetConfig, AmoebaNetD
from jaxpipe.models.bert import Bert, BertConfig
from jaxpipe.models.data import digits
from jaxpipe.models.lm import LM, LMConfig
from jaxpipe.models.mlp import MLP, MLPConfig
from jaxpipe.models.nnx_cnn import CNN, CNNConfig
from jaxpipe.models.nnx_lm import NnxLM
from jaxpipe.models.resnet import ResNet, ResNetConfig

__all__ = [
    "MLP",
    "AmoebaNetConfig",
    "AmoebaNetD",
    "Bert",
    "BertConfig",
    "CNN",
    "CNNConfig",
    "LM",
    "LMConfig",
    "MLPConfig",
    "ModelSpec",
    "NnxLM",
    "ResNet",
    "ResNetConfig",
    "cross_entropy_loss",
    "digits",
    "get",
    "names",
]

class _TinyImage(TypedDict):
    image_size: int
    num_classes: int


class _TinyBert(TypedDict):
    vocab_size: int
    max_positions: int
    seq_len: int
    dropout: float


_TINY_IMAGE: _TinyImage = {"image_size": 32, "num_classes": 10}
_TINY_BERT: _TinyBert = {"vocab_size": 128, "max_positions": 16, "seq_len": 16, "dropout": 0.1}
_TINY_LM = LMConfig(num_layers=3, hidden=32, heads=4, vocab_size=128, seq_len=16)

# name -> (spec builder, default config); every full config is followed by its tiny twin.
_REGISTRY: dict[str, tuple[Callable[[str, Any], ModelSpec], Any]] = {
    "mlp": (mlp.make_spec, MLPConfig()),
    "mlp-tiny": (mlp.make_spec, MLPConfig(hidden=(16, 16))),
    "resnet18": (resnet.make_spec, ResNetConfig(stage_sizes=(2, 2, 2, 2), bottleneck=False)),
    "resnet18-tiny": (resnet.make_spec, ResNetConfig(
        stage_sizes=(1, 1, 1, 1), bottleneck=False, width=8, **_TINY_IMAGE)),
    "resnet50": (resnet.make_spec, ResNetConfig(stage_sizes=(3, 4, 6, 3))),
    "resnet50-tiny": (resnet.make_spec, ResNetConfig(
        stage_sizes=(1, 1, 1, 1), width=4, **_TINY_IMAGE)),
    "resnet101": (resnet.make_spec, ResNetConfig(stage_sizes=(3, 4, 23, 3))),
    "resnet101-tiny": (resnet.make_spec, ResNetConfig(
        stage_sizes=(1, 1, 2, 1), width=4, **_TINY_IMAGE)),
    "amoebanet18": (amoebanet.make_spec, AmoebaNetConfig(num_layers=18, filters=256)),
    "amoebanet18-tiny": (amoebanet.make_spec, AmoebaNetConfig(
        num_layers=3, filters=32, **_TINY_IMAGE)),
    "amoebanet36": (amoebanet.make_spec, AmoebaNetConfig(num_layers=36, filters=256)),
    "amoebanet36-tiny": (amoebanet.make_spec, AmoebaNetConfig(
        num_layers=6, filters=32, **_TINY_IMAGE)),
    "bert-base": (bert.make_spec, BertConfig(num_layers=12, hidden=768, heads=12)),
    "bert-base-tiny": (bert.make_spec, BertConfig(
        num_layers=2, hidden=32, heads=4, **_TINY_BERT)),
    "bert-large": (bert.make_spec, BertConfig(num_layers=24, hidden=1024, heads=16)),
    "bert-large-tiny": (bert.make_spec, BertConfig(
        num_layers=3, hidden=48, heads=4, **_TINY_BERT)),
    "lm": (lm.make_spec, LMConfig()),
    "lm-tiny": (lm.make_spec, _TINY_LM),
    "lm-scan": (lm.make_spec, LMConfig(scan=True)),
    "lm-scan-tiny": (lm.make_spec, dataclasses.replace(_TINY_LM, scan=True)),
    "nnx-cnn": (nnx_cnn.make_spec, CNNConfig()),
    "nnx-cnn-tiny": (nnx_cnn.make_spec, CNNConfig(widths=(8, 16, 16), image_size=16)),
    "nnx-lm": (nnx_lm.make_spec, LMConfig()),
    "nnx-lm-tiny": (nnx_lm.make_spec, _TINY_LM),
}


def names() -> tuple[str, ...]:
    """Returns every registered model name, each full config followed by its ``-tiny`` twin."""
    return tuple(_REGISTRY)


def get(name: str, **overrides: object) -> ModelSpec:
    """Returns the `ModelSpec` registered as `name`, with config fields replaced by `overrides`.

    Args:
      name: one of `names()`, e.g. ``"resnet101"`` or ``"bert-base-tiny"``.
      **overrides: fields of the family's config dataclass, e.g. ``filters=64`` (AmoebaNet),
        ``seq_len=64`` (BERT), ``image_size=64`` or ``num_classes=10`` (image models).

    Returns:
      ModelSpec: the model, its per-sample input spec, batch maker, loss and initialiser.

    Raises:
      UnknownModelError: `name` is not registered; the message lists the registered names.
      ModelConfigError: an override is not a field of the family's config (the message lists
        the fields), or the config's values do not fit together.

    Example:
      >>> spec = get("bert-base-tiny", seq_len=8)
      >>> spec.num_classes, spec.input_spec[0].shape, spec.uses_dropout
      (2, (8,), True)
    """
    if name not in _REGISTRY:
        raise UnknownModelError(f"no model named {name!r}; registered: {', '.join(_REGISTRY)}.")
    make_spec, config = _REGISTRY[name]
    fields = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ModelConfigError(f"{name}: unknown config field(s) {', '.join(unknown)}; "
                        f"{type(config).__name__} has {', '.join(fields)}.")
    return make_spec(name, dataclasses.replace(config, **overrides))
