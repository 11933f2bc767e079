"""The experiments as data: one recipe per experiment, shared by its variants; each variant changes one
thing. The trainer (``precompute/experiments/training.py``) runs them; the experiment pages show their
titles, descriptions, papers and the variants not trained yet from the same declarations.

An experiment is registered with the :func:`experiment` decorator on a function that returns its
:class:`Experiment`. Every experiment also has the implicit variant ``random``: the first variant's
architecture at its initialisation under the run's seed, saved without training (epochs = 0), the
"before training" baseline of the symmetry paper.

Torch-free (the ground floor, see ``precompute/declarations/__init__.py``); the input transforms' functions
(torch) are in ``precompute/experiments/recipes.py``, keyed by the names of :data:`INPUT_TRANSFORMS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from ..registry import Registry, UnknownName, unknown_message

RANDOM = "random"


@dataclass(frozen=True)
class Recipe:
    """How every variant of an experiment is trained (so that the comparisons are fair)."""

    dataset: str = "fashion-mnist"  # default; --dataset changes it for all variants of a run
    epochs: int = 30  # default; --epochs
    batch_size: int = 128
    optimizer: str = "sgd"  # SGD with momentum
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # on every trainable parameter, BatchNorm included
    #: step decay: lr * lr_decay at each fraction of the epochs in lr_milestones (epoch-wise)
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1
    #: "translate" (random shifts of up to `translate` pixels, zero fill) and/or "hflip"
    augmentation: tuple[str, ...] = ("translate", "hflip")
    translate: int = 2
    init: str = "he-normal (kaiming_normal_, mode=fan_in, nonlinearity=relu), biases 0"
    bn_gamma: str = "ones"  # "ones" | "uniform" (U[0, 1]), beta = 0
    eval_batch_size: int = 1000

    def public(self) -> dict:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["augmentation"] = list(self.augmentation)
        return d

    def lr_at(self, epoch: int, epochs: int) -> float:
        # a milestone never falls on epoch 0 (round(0.5) == 0 would cut the lr of a 1-epoch run at once)
        drops = sum(1 for m in self.lr_milestones if epoch >= max(1, int(m * epochs + 0.5)))
        return self.lr * self.lr_decay ** drops


#: input transforms (applied to [0, 1] images after augmentation, at training and test time): name -> what
#: it does in words; the functions are precompute/experiments/recipes.py's TRANSFORM_FUNCTIONS
INPUT_TRANSFORMS: dict[str, str] = {
    "rot90": "images rotated 90 degrees counter-clockwise (torch.rot90, k=1, dims (H, W)), for training and testing",
    "odd-size": "images resized (bilinear) from an even size to the next odd size, e.g. 28 -> 29, "
                "32 -> 33, so that every stride-2 3x3 conv consumes its padding evenly",
}

TRAINABLE = {
    "all": "every parameter",
    "bn": "only BatchNorm gamma and beta; every conv and the linear layer frozen at initialisation",
    "bn+output": "BatchNorm gamma and beta and the output linear layer; every conv frozen at initialisation",
}


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    arch_kwargs: dict = field(default_factory=dict)  # changes to the experiment's arch_kwargs
    input_transform: Optional[str] = None  # key of INPUT_TRANSFORMS
    trainable: str = "all"  # key of TRAINABLE

    def __post_init__(self):
        if self.input_transform and self.input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"unknown input transform {self.input_transform!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {', '.join(TRAINABLE)}; got {self.trainable!r}")

    def public(self) -> dict:
        return {"name": self.name, "description": self.description, "arch_kwargs": dict(self.arch_kwargs),
                "input_transform": self.input_transform, "trainable": self.trainable}


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    description: str
    arch: str  # a name of .architectures (the builder is in precompute/experiments/nets.py)
    arch_kwargs: dict
    recipe: Recipe
    variants: tuple[Variant, ...]
    #: headline measurements that need data, computed after training (see measurements.py)
    measurements: tuple[str, ...] = ()
    paper: str = ""

    def variant_names(self, with_random: bool = False) -> list[str]:
        return [v.name for v in self.variants] + ([RANDOM] if with_random else [])

    def variant(self, name: str) -> Variant:
        if name == RANDOM:
            base = self.variants[0]
            return Variant(RANDOM, f"untrained: the {base.name} architecture at its initialisation (epochs = 0)",
                           arch_kwargs=dict(base.arch_kwargs), input_transform=base.input_transform,
                           trainable=base.trainable)
        for v in self.variants:
            if v.name == name:
                return v
        raise UnknownName(unknown_message(f"variant of {self.name}", name, self.variant_names(True)))

    def model_name(self, variant: str, seed: int = 0) -> str:
        """``<experiment>-<variant>``; runs with another seed than 0 (the spread of an effect) are
        ``<experiment>-<variant>-seed<S>``."""
        return f"{self.name}-{variant}" + (f"-seed{seed}" if seed else "")

    def public(self) -> dict:
        return {"name": self.name, "title": self.title, "description": self.description, "arch": self.arch,
                "arch_kwargs": dict(self.arch_kwargs), "recipe": self.recipe.public(),
                "variants": [v.public() for v in self.variants], "measurements": list(self.measurements),
                "paper": self.paper, "models": [self.model_name(v) for v in self.variant_names(True)]}


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def experiment(fn: Callable[[], Experiment]) -> Experiment:
    """Decorator: register the Experiment that ``fn`` returns (under its own name)."""
    exp = fn()
    names = [v.name for v in exp.variants]
    if len(set(names)) != len(names) or RANDOM in names:
        raise ValueError(f"experiment {exp.name}: variant names must be unique and not {RANDOM!r}; got {names}")
    return EXPERIMENTS.add(exp.name, exp)


# ---- the experiments ------------------------------------------------------------------------------------
@experiment
def banding() -> Experiment:
    return Experiment(
        name="banding", title="Weight banding",
        description="The simplified net of the weight-banding article (6 groups of 3x3 conv + BN + ReLU, L2 "
                    "pooling, global average pooling, linear), and one change each to what should make "
                    "banding appear, flip or vanish in the last conv layers.",
        arch="banding-net", arch_kwargs={"width": 32, "pool_after": [2, 4], "head": "gap"},
        recipe=Recipe(epochs=20, lr=0.05),
        variants=(
            Variant("baseline", "global average pooling, then linear"),
            Variant("rot90", "the baseline trained and tested on images rotated 90 degrees",
                    input_transform="rot90"),
            Variant("nogap", "no global average pooling: flatten (C*H*W), then linear", {"head": "flatten"}),
            Variant("xpool", "average pooling along x only (over W), flatten over y (C*H), then linear",
                    {"head": "xpool"}),
        ),
        measurements=("gamma_clamp", "dead_relu"),
        paper="weight-banding.txt")


_RESNET = {"depth": 20, "width": 16, "groups": 1, "grouped_stages": 2, "padding_mode": "zeros"}


@experiment
def bnonly() -> Experiment:
    return Experiment(
        name="bnonly", title="Training BatchNorm and only BatchNorm",
        description="A CIFAR-style ResNet-20 trained with all parameters, or with only BatchNorm's gamma and beta "
                    "(optionally plus the output layer), every conv frozen at its He-normal initialisation. "
                    "BatchNorm gamma starts U[0, 1] as in Frankle et al.",
        arch="cifar-resnet", arch_kwargs=dict(_RESNET),
        recipe=Recipe(epochs=30, lr=0.1, bn_gamma="uniform"),
        variants=(
            Variant("all", "every parameter trainable", trainable="all"),
            Variant("bn", "only BatchNorm gamma and beta trainable", trainable="bn"),
            Variant("bn-output", "BatchNorm gamma and beta and the output layer trainable", trainable="bn+output"),
        ),
        measurements=("gamma_clamp", "dead_relu"),
        paper="training-batchnorm-only.txt")


@experiment
def symmetry() -> Experiment:
    return Experiment(
        name="symmetry", title="Symmetry of the mean kernel: padding",
        description="The CIFAR-style ResNet-20 with zero padding, reflection padding, or an odd input size "
                    "(every stride-2 conv then consumes its padding evenly).",
        arch="cifar-resnet", arch_kwargs=dict(_RESNET),
        recipe=Recipe(epochs=30, lr=0.1),
        variants=(
            Variant("zeropad", "zero padding (the usual)"),
            Variant("reflectpad", "reflection padding in every 3x3 conv", {"padding_mode": "reflect"}),
            Variant("oddsize", "zero padding, input resized to an odd size (28 -> 29, 32 -> 33)",
                    input_transform="odd-size"),
        ),
        measurements=("gamma_clamp", "dead_relu"),
        paper="symmetries-in-convolutional-weights.txt")


@experiment
def branches() -> Experiment:
    return Experiment(
        name="branches", title="Branch specialisation",
        description="The CIFAR-style ResNet-20 with the convolutions of its first two stages split into 1, 2 or "
                    "4 branches (grouped convolutions; the stem is whole and the third stage merges them).",
        arch="cifar-resnet", arch_kwargs=dict(_RESNET),
        recipe=Recipe(epochs=30, lr=0.1),
        variants=(
            Variant("1", "one branch (no grouping)", {"groups": 1}),
            Variant("2", "two branches: groups=2 in the convs of stages 1 and 2", {"groups": 2}),
            Variant("4", "four branches: groups=4 in the convs of stages 1 and 2", {"groups": 4}),
        ),
        measurements=("gamma_clamp", "dead_relu"),
        paper="branch-specialization.txt")
