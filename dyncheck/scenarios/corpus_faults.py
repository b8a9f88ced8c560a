"""Faulty runs of the calibration corpus (registered into dyncheck.scenarios.SCENARIOS).

Each fault is a bug catalogued by a published taxonomy of real deep-learning faults: Humbatova et al., "Taxonomy of
real faults in deep learning systems" (ICSE 2020); DeepFD (Cao et al., ICSE 2022: loss function, optimizer,
learning rate, activation, initialization, data preprocessing, epochs/iterations); AUTOTRAINER (Zhang et al., ICSE
2021: vanishing gradient, exploding gradient, dying ReLU, oscillating loss, slow convergence). Each summary names the
bug and its class.

Every builder takes ``fixed=False``; ``fixed=True`` builds the same run without the bug (same data, model, optimizer
and steps): the counterpart that shows the fault really hurts. Nothing registers the fixed runs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from . import (ScenarioModule, SeqLSTM, SeqTransformer, Setup, SmallResNet, _adam, _init_normal, _linears, _scenario,
               _sgd, _trainer, _warmup_cosine, digits, mlp, small_cnn)

Criterion = Callable[[Tensor, Tensor], Tensor]
Loaders = tuple[DataLoader, DataLoader]


# ----------------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------------
class FaultModule(ScenarioModule):
    """A :class:`ScenarioModule` with the switches the bugs below need.

    ``criterion(outputs, y)``: the training loss as the buggy script wired it; validation keeps ``metric`` (default:
    plain cross-entropy on the network's outputs), so ``val_loss`` measures the model and compares with the fixed run.
    ``zero_grad=False``: gradients are never reset, they accumulate over steps. ``bn_eval``: BatchNorm layers are put
    in eval mode before every training batch. ``scheduler(opt)``: a torch scheduler, stepped every ``interval``
    (``"step"`` or ``"epoch"``).
    ``groups(module) -> param groups``: what the optimizer is built from (default: all parameters).
    ``half``: the network runs in float16 (inputs cast to it, outputs back to float32 for the loss)."""

    def __init__(self, net: nn.Module, optimizer: Callable[[Any], torch.optim.Optimizer], *,
                 criterion: Criterion | None = None, metric: Criterion | None = None, zero_grad: bool = True,
                 bn_eval: bool = False, scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
                 interval: str = "step", groups: Callable[[nn.Module], Any] | None = None, half: bool = False,
                 **kwargs: Any):
        super().__init__(net.half() if half else net, optimizer, **kwargs)
        self.criterion, self.metric = criterion, metric
        self.zero_grad_enabled, self.bn_eval, self.half_net = zero_grad, bn_eval, half
        self._make_scheduler, self._interval, self._groups = scheduler, interval, groups

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.half()).float() if self.half_net else self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.criterion is None:
            return super().training_step(batch, batch_idx)
        x, y = batch
        return self.criterion(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.metric is None:
            return super().validation_step(batch, batch_idx)
        x, y = batch
        self.log("val_loss", self.metric(self(x), y), on_epoch=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.bn_eval:  # a "freeze BatchNorm" helper applied to the whole model
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        if self.zero_grad_enabled:
            optimizer.zero_grad()

    def configure_optimizers(self) -> Any:
        opt = self._make_optimizer(self._groups(self.net) if self._groups else self.parameters())
        if self._make_scheduler is not None:
            sched = {"scheduler": self._make_scheduler(opt), "interval": self._interval}
            return {"optimizer": opt, "lr_scheduler": sched}
        if self._schedule is not None:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, self._schedule)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt


def _net(hidden: int = 128, depth: int = 2, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A digits MLP: 64 inputs, ``depth`` hidden layers of ``hidden`` units, 10 outputs."""
    return mlp([64] + [hidden] * depth + [10], act)


def _run(module: nn.Module, loaders: Loaders, steps: int, **trainer: Any) -> Setup:
    train, val = loaders
    return Setup(module, train, val, _trainer(steps, len(train), **trainer))


def _tensors(loader: DataLoader) -> tuple[Tensor, Tensor]:
    return loader.dataset.tensors  # type: ignore[attr-defined]


def _preprocess(loaders: Loaders, transform: Callable[[Tensor], Tensor]) -> Loaders:
    """Replace training and validation inputs by ``transform(inputs)`` (the same preprocessing step for both)."""
    for loader in loaders:
        x = _tensors(loader)[0]
        x.copy_(transform(x))
    return loaders


def _noisy_labels(loaders: Loaders, share: float) -> Loaders:
    """Shuffle the labels of a fixed ``share`` of the training set among themselves (label noise)."""
    y = _tensors(loaders[0])[1]
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(y), generator=g)[: int(share * len(y))]
    y[idx] = y[idx[torch.randperm(len(idx), generator=g)]]
    return loaders


def _at_step(step: int, action: Callable[[Any], None]) -> Callable[[int, Any], None]:
    """A ``corrupt`` hook running ``action(batch)`` on the training batch of ``step``."""
    def corrupt(global_step: int, batch: Any) -> None:
        if global_step == step:
            action(batch)

    return corrupt


class _StaleLabels:
    """A ``corrupt`` hook pairing each batch's inputs with the previous batch's labels (an off-by-one in a
    prefetching loader)."""

    def __init__(self) -> None:
        self.previous: Tensor | None = None

    def __call__(self, step: int, batch: Any) -> None:
        y = batch[1]
        current = y.clone()
        if self.previous is not None and len(self.previous) == len(y):
            y.copy_(self.previous)
        self.previous = current


# ----------------------------------------------------------------------------------------------------------------
# models not in the shared set
# ----------------------------------------------------------------------------------------------------------------
class DetachedTransformer(SeqTransformer):
    """:class:`SeqTransformer` whose encoder output is ``.detach()``-ed before pooling (``detach=True``): the
    embedding and encoder never get a gradient."""

    def __init__(self, detach: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.detach = detach

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(self.embed(x) + self.pos)
        if self.detach:
            h = h.detach()
        return self.head(self.norm(h.mean(1)))


class HFClassifier(nn.Module):
    """A tiny Hugging Face encoder (``bert``) or decoder (``gpt2``) built from a config, over the 8 rows of a digit
    (each row projected to a token embedding), mean-pooled into a linear classification head."""

    def __init__(self, kind: str = "bert", d: int = 32, layers: int = 2, heads: int = 2):
        super().__init__()
        if kind == "bert":
            from transformers import BertConfig, BertModel

            cfg = BertConfig(vocab_size=1, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=2 * d, max_position_embeddings=8)
            cfg._attn_implementation = "eager"
            self.backbone = BertModel(cfg, add_pooling_layer=False)
        else:
            from transformers import GPT2Config, GPT2Model

            cfg = GPT2Config(vocab_size=1, n_embd=d, n_layer=layers, n_head=heads, n_positions=8)
            cfg._attn_implementation = "eager"
            self.backbone = GPT2Model(cfg)
        self.backbone.get_input_embeddings().requires_grad_(False)  # unused: tokens come in as embeddings
        self.rows = nn.Linear(8, d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.backbone(inputs_embeds=self.rows(x)).last_hidden_state
        return self.head(h.mean(1))


def _deep_cnn(depth: int = 10, width: int = 16, bn: bool = False) -> nn.Sequential:
    """A plain (non-residual) stack of 3x3 convolutions + ReLU, optionally with BatchNorm, then a linear head."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Conv2d(1 if i == 0 else width, width, 3, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * 64, 10))


def _regression(n_train: int = 1000, n_val: int = 500, batch_size: int = 32) -> Loaders:
    """Friedman #1 (synthetic, sklearn): 10 features in [0, 1], a smooth target, standardised (half negative)."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_train + n_val, noise=0.3, random_state=0)
    y = (y - y.mean()) / y.std()
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]
    return (DataLoader(TensorDataset(xt[:n_train], yt[:n_train]), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(xt[n_train:], yt[n_train:]), batch_size=n_val))


# ----------------------------------------------------------------------------------------------------------------
# wrong loss wiring (DeepFD: loss function; Humbatova: model > loss function)
# ----------------------------------------------------------------------------------------------------------------
def _mse_to_index(outputs: Tensor, y: Tensor) -> Tensor:
    """MSE of every output against the class index (labels used as regression targets)."""
    return F.mse_loss(outputs, y.to(outputs.dtype)[:, None].expand_as(outputs))


def _ce_sum(outputs: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(outputs, y, reduction="sum")


@_scenario("double-softmax-cnn", "cnn",
           "the CNN ends in nn.Softmax and its probabilities go into CrossEntropyLoss (softmax applied twice): "
           "the loss is floored at 1.46 and plateaus there (DeepFD: loss function; AUTOTRAINER: slow convergence)",
           expected={"softmax-before-loss"}, allowed={"premature-plateau", "no-progress", "update-too-small"})
def _double_softmax(fixed: bool = False) -> Setup:
    net = small_cnn()
    if not fixed:
        net.append(nn.Softmax(-1))
    return _run(ScenarioModule(net, _sgd(0.1, momentum=0.9)), digits(shape="image"), 350)


@_scenario("frozen-random-encoder", "mlp",
           "a freeze loop meant for a pre-trained encoder left on a randomly initialised one: the four hidden layers "
           "of a digits MLP keep requires_grad=False (the optimizer still holds them), only the head trains on "
           "features that PyTorch's default init shrinks ~2.5x per ReLU layer (Humbatova: wrong layers frozen)",
           expected={"frozen-parameters"}, allowed={"no-progress", "premature-plateau", "update-too-small"})
def _frozen_random_encoder(fixed: bool = False) -> Setup:
    net = _net(128, 4)
    if not fixed:
        for layer in list(net)[:-1]:
            layer.requires_grad_(False)
    return _run(ScenarioModule(net, _sgd(0.05, momentum=0.9)), digits(), 800)


@_scenario("optimizer-holds-the-head-only", "mlp",
           "the optimizer is built from the head's parameters only (model[-1].parameters() where model.parameters() "
           "was meant): the deep body never trains; it requires grad, so its parameters also read as unchanged "
           "(DeepFD: optimizer)",
           expected={"unchanged-parameters", "frozen-parameters"},
           allowed={"no-progress", "premature-plateau", "update-too-small"})
def _optimizer_head_only(fixed: bool = False) -> Setup:
    net = _net(128, 4)
    sgd = _sgd(0.05, momentum=0.9)
    make = sgd if fixed else (lambda params: sgd(net[-1].parameters()))  # the parameters it is handed, ignored
    return _run(ScenarioModule(net, make), digits(), 800)


class _HeadReplacedModule(ScenarioModule):
    """Assigns a fresh head in ``on_train_start``, after ``configure_optimizers`` built the optimizer from the old
    one (a head swapped for a new task after the optimizer was made)."""

    def __init__(self, net: nn.Sequential, optimizer: Callable[[Any], torch.optim.Optimizer], replace: bool):
        super().__init__(net, optimizer)
        self._replace = replace

    def on_train_start(self) -> None:
        if self._replace:
            old = self.net[-1]
            self.net[-1] = nn.Linear(old.in_features, old.out_features)


@_scenario("head-replaced-after-optimizer", "mlp",
           "the classifier head is replaced by a fresh nn.Linear in on_train_start, after the optimizer was built "
           "from the old one: the new head requires grad, gets gradients and never changes -- the body learns to "
           "feed a fixed random projection, so the loss still falls (DeepFD: optimizer; held-out suite 5)",
           expected={"unchanged-parameters"}, allowed={"premature-plateau", "frozen-parameters"})
def _head_replaced(fixed: bool = False) -> Setup:
    return _run(_HeadReplacedModule(_net(128, 2), _adam(1e-3), replace=not fixed), digits(), 800)


@_scenario("mse-on-class-index", "mlp",
           "every logit regressed with MSE onto the integer class index instead of cross-entropy: the training "
           "loss falls 200x, the validation cross-entropy never leaves chance (DeepFD: loss function)",
           expected={"train-val-divergence", "validation-stalled"}, allowed={"premature-plateau"})
def _mse_index(fixed: bool = False) -> Setup:
    module = FaultModule(_net(), _sgd(0.02, momentum=0.9), criterion=None if fixed else _mse_to_index)
    return _run(module, digits(), 1000)


@_scenario("loss-sum-reduction", "mlp",
           "cross-entropy with reduction='sum' over batches of 256 under an lr tuned for the mean: the effective "
           "lr is 256x too high: gradient norms ~100x normal, the first update rewrites the weights and kills "
           "every ReLU (Humbatova: loss function; DeepFD: learning rate)",
           expected={"exploding-gradients", "update-too-large", "dead-units"},
           allowed={"no-progress", "premature-plateau", "update-too-small", "loss-spike", "loss-divergence",
                    "non-finite"})
def _sum_reduction(fixed: bool = False) -> Setup:
    module = FaultModule(_net(), _sgd(0.05), criterion=None if fixed else _ce_sum)
    return _run(module, digits(batch_size=256), 600)


@_scenario("stale-targets-lstm", "lstm",
           "each batch is paired with the previous batch's labels (off-by-one in a prefetching loader): nothing "
           "to learn, the loss stays at chance (Humbatova: training data > wrong labels)", expected={"no-progress"},
           allowed={"premature-plateau"})
def _stale_targets(fixed: bool = False) -> Setup:
    module = ScenarioModule(SeqLSTM(64), _adam(5e-3), corrupt=None if fixed else _StaleLabels())
    return _run(module, digits(shape="seq"), 450)


# ----------------------------------------------------------------------------------------------------------------
# wrong activation (DeepFD: activation; Humbatova: model > layers > activation function)
# ----------------------------------------------------------------------------------------------------------------
@_scenario("relu-on-logits", "mlp",
           "a ReLU after the output layer, so CrossEntropyLoss sees clamped logits: output units that go "
           "negative for every input die and their classes are never predicted (DeepFD: activation)",
           expected={"clamped-output", "dead-units"}, allowed={"premature-plateau", "no-progress"})
def _relu_logits(fixed: bool = False) -> Setup:
    net = _net()
    if not fixed:
        net.append(nn.ReLU())
    return _run(ScenarioModule(net, _sgd(0.1, momentum=0.9)), digits(), 800)


@_scenario("deep-sigmoid-adam", "mlp",
           "8 hidden sigmoid layers trained with Adam: Adam rescales the tiny early-layer gradients, yet the "
           "loss crawls far behind the ReLU version (AUTOTRAINER: vanishing gradient; DeepFD: activation)",
           expected={"vanishing-gradients"},
           allowed={"no-progress", "premature-plateau", "saturated-activations", "update-too-small"})
def _deep_sigmoid_adam(fixed: bool = False) -> Setup:
    net = _net(64, 8, nn.ReLU if fixed else nn.Sigmoid)
    return _run(ScenarioModule(net, _adam(1e-3)), digits(), 650)


@_scenario("relu-regression-head", "mlp",
           "a ReLU after the last layer of a regression head whose standardised target is negative half the time: "
           "predictions cannot go below 0 (DeepFD: activation)", expected={"clamped-output"},
           allowed={"premature-plateau", "dead-units", "no-progress"})
def _relu_regression(fixed: bool = False) -> Setup:
    net = mlp([10, 64, 64, 1])
    if not fixed:
        net.append(nn.ReLU())
    module = FaultModule(net, _adam(3e-3), criterion=F.mse_loss, metric=F.mse_loss)
    return _run(module, _regression(), 1000)


# ----------------------------------------------------------------------------------------------------------------
# missing or broken normalisation (DeepFD: data preprocessing; Humbatova: model > missing normalisation)
# ----------------------------------------------------------------------------------------------------------------
@_scenario("unnormalized-pixels-sgd", "cnn",
           "pixels fed as 0..255 intensities (x*255) instead of [0, 1], SGD with the usual lr: the first updates "
           "are thousands of times too large and kill ~95% of the ReLU channels for good (DeepFD: data "
           "preprocessing)", expected={"dead-units"},
           allowed={"exploding-gradients", "update-too-large", "no-progress", "premature-plateau", "update-too-small",
                    "loss-spike"})
def _unnormalized(fixed: bool = False) -> Setup:
    loaders = digits(shape="image")
    if not fixed:
        _preprocess(loaders, lambda x: x * 255)
    return _run(ScenarioModule(small_cnn(), _sgd(0.02, momentum=0.9)), loaders, 400)


@_scenario("bn-eval-mode-resnet", "resnet",
           "a freeze-BatchNorm helper puts every BatchNorm in eval mode during training: they normalise with their "
           "initial running statistics (mean 0, var 1), i.e. not at all; the signal fades through the "
           "un-normalised ResNet and SGD (lr 0.02) never leaves chance (Humbatova: model > wrong normalisation)",
           expected={"no-progress"}, allowed={"premature-plateau", "update-too-small", "vanishing-gradients"})
def _bn_eval(fixed: bool = False) -> Setup:
    steps = 140
    module = FaultModule(SmallResNet(16), _sgd(0.02, momentum=0.9, weight_decay=5e-4),
                         schedule=_warmup_cosine(1, steps), bn_eval=not fixed)
    return _run(module, digits(shape="image", batch_size=64), steps)


@_scenario("deep-plain-cnn-no-norm", "cnn",
           "12 plain 3x3 conv layers with PyTorch's default init and no normalisation: the signal shrinks layer by "
           "layer and the first layers get ~1e-6 of the head's gradient (Humbatova: model > missing "
           "normalisation; AUTOTRAINER: vanishing gradient)", expected={"vanishing-gradients"},
           allowed={"no-progress", "premature-plateau", "update-too-small"})
def _deep_plain_cnn(fixed: bool = False) -> Setup:
    return _run(ScenarioModule(_deep_cnn(12, 8, bn=fixed), _sgd(0.05)), digits(shape="image"), 240)


# ----------------------------------------------------------------------------------------------------------------
# bad initialisation (DeepFD: initialization; Humbatova: model > weights initialisation)
# ----------------------------------------------------------------------------------------------------------------
def _fill_linears(net: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        for lin in _linears(net):
            lin.weight.fill_(value)
            lin.bias.zero_()
    return net


@_scenario("zero-init-mlp", "mlp",
           "every weight and bias initialised to 0: all ReLUs output 0, no hidden weight ever gets a gradient, "
           "only the output bias learns the class prior (DeepFD: initialization)",
           expected={"unchanged-parameters", "dead-units"},
           allowed={"no-progress", "premature-plateau", "vanishing-gradients", "update-too-small"})
def _zero_init(fixed: bool = False) -> Setup:
    net = _net()
    if not fixed:
        _fill_linears(net, 0.0)
    return _run(ScenarioModule(net, _sgd(0.05, momentum=0.9)), digits(), 900)


@_scenario("constant-init-lstm", "lstm",
           "LSTM and head initialised with one constant: every hidden unit computes the same thing forever "
           "(symmetry is never broken), a 64-unit LSTM acting as a 1-unit one (DeepFD: initialization)",
           expected={"symmetric-units", "premature-plateau"}, allowed={"no-progress"})
def _constant_init(fixed: bool = False) -> Setup:
    net = SeqLSTM(64)
    if not fixed:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(0.05)
    return _run(ScenarioModule(net, _adam(5e-3)), digits(shape="seq"), 450)


@_scenario("init-too-large-cnn", "cnn",
           "conv and linear weights drawn from torch.randn (std 1, no fan-in scaling): logits in the hundreds, a "
           "loss of ~300 and gradient norm ~200 at the start; the first updates kill every ReLU channel and the "
           "net is stuck at chance (DeepFD: initialization; AUTOTRAINER: dying ReLU)",
           expected={"dead-units", "exploding-gradients"},
           allowed={"loss-spike", "no-progress", "premature-plateau", "update-too-large",
                    "update-too-small"})
def _init_large(fixed: bool = False) -> Setup:
    net = small_cnn()
    if not fixed:
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(m.weight, std=1.0)
    return _run(ScenarioModule(net, _sgd(0.01, momentum=0.9)), digits(shape="image"), 400)


@_scenario("init-too-small-mlp", "mlp",
           "6-layer ReLU MLP initialised with std 0.05/sqrt(fan_in) (30x below He): the signal and every gradient "
           "are ~1e-9, SGD does not move; on some seeds the last ReLU layer's biases drift below zero and it dies "
           "within 100 steps, leaving no gradient anywhere (DeepFD: initialization; AUTOTRAINER: vanishing "
           "gradient, dying ReLU)",
           expected={"update-too-small", "vanishing-gradients", "dead-units"},
           allowed={"no-progress", "premature-plateau"})
def _init_small(fixed: bool = False) -> Setup:
    net = _net(64, 6)
    _init_normal(net, 2 ** 0.5 if fixed else 0.05)
    return _run(ScenarioModule(net, _sgd(0.05, momentum=0.9)), digits(), 800)


# ----------------------------------------------------------------------------------------------------------------
# data and label bugs (Humbatova: training data; DeepFD: data preprocessing)
# ----------------------------------------------------------------------------------------------------------------
@_scenario("partial-label-noise-cnn", "cnn",
           "40% of the labels of a 200-image training set shuffled by a join bug: the CNN first learns the clean "
           "part, then memorises the noise and validation loss climbs (Humbatova: training data > wrong labels)",
           expected={"train-val-divergence"}, allowed={"premature-plateau"})
def _label_noise(fixed: bool = False) -> Setup:
    loaders = digits(200, shape="image", samples_per_epoch=3200)
    if not fixed:
        _noisy_labels(loaders, 0.4)
    return _run(ScenarioModule(small_cnn(dropout=0.0), _adam(2e-3)), loaders, 450)


def _sorted_by_class(loaders: Loaders) -> Loaders:
    """The training set ordered by label and served without shuffling (the loader's shuffle flag forgotten)."""
    x, y = _tensors(loaders[0])
    order = torch.argsort(y, stable=True)
    train = DataLoader(TensorDataset(x[order], y[order]), batch_size=loaders[0].batch_size, shuffle=False)
    return train, loaders[1]


@_scenario("sorted-unshuffled-mlp", "mlp",
           "training data sorted by class and never shuffled: each stretch of batches holds one digit, the model "
           "chases it and forgets the others -- the loss swings up at every class change (Humbatova: training "
           "data > not shuffled; AUTOTRAINER: oscillating loss)", expected={"oscillating-loss", "loss-spike"},
           allowed={"premature-plateau", "train-val-divergence", "update-too-large", "exploding-gradients"})
def _sorted(fixed: bool = False) -> Setup:
    loaders = digits(batch_size=16)
    if not fixed:
        loaders = _sorted_by_class(loaders)
    return _run(ScenarioModule(_net(), _sgd(0.05)), loaders, 1000)


@_scenario("same-batch-cnn", "cnn",
           "the loader hands out the same 32 images every step (a cached first batch): training loss to ~1e-4, "
           "validation loss climbs or never improves (Humbatova: training process > same batch reused)",
           expected={"train-val-divergence", "validation-stalled"}, allowed={"premature-plateau"})
def _same_batch(fixed: bool = False) -> Setup:
    loaders = digits(shape="image") if fixed else digits(32, shape="image", samples_per_epoch=32 * 40)
    return _run(ScenarioModule(small_cnn(dropout=0.0), _adam(2e-3)), loaders, 350)


@_scenario("zeroed-inputs-transformer", "transformer",
           "pixels integer-divided (//) by 17 instead of divided: every input is all zeros, the model can only "
           "learn the class prior and the input embedding never gets a gradient (DeepFD: data preprocessing)",
           expected={"no-progress", "unchanged-parameters"}, allowed={"premature-plateau", "update-too-small"})
def _zeroed(fixed: bool = False) -> Setup:
    loaders = _preprocess(digits(shape="seq"), (lambda x: x * 16 / 17) if fixed else (lambda x: (x * 16) // 17))
    return _run(ScenarioModule(SeqTransformer(), _adam(3e-3)), loaders, 240)


def _inf_pixels(batch: Any) -> None:
    batch[0][:4].fill_(float("inf"))


@_scenario("inf-input-lstm", "lstm",
           "at step 250 four images of a batch hold +inf (a division by a zero std in preprocessing): loss, "
           "gradients and weights turn NaN (Humbatova: training data > corrupt inputs)", expected={"non-finite"},
           allowed={"loss-divergence", "loss-spike", "exploding-gradients", "no-progress", "premature-plateau"})
def _inf_input(fixed: bool = False) -> Setup:
    module = ScenarioModule(SeqLSTM(64), _adam(5e-3), corrupt=None if fixed else _at_step(250, _inf_pixels))
    return _run(module, digits(shape="seq"), 450)


# ----------------------------------------------------------------------------------------------------------------
# optimiser misuse (DeepFD: optimizer, learning rate; Humbatova: training process > optimiser)
# ----------------------------------------------------------------------------------------------------------------
@_scenario("forgot-zero-grad-cnn", "cnn",
           "optimizer.zero_grad() never called: every step applies the sum of all gradients so far, the step size "
           "grows with the run: gradient norm x70 within 50 steps, the ReLUs die and the loss climbs to 2-3x "
           "chance (Humbatova: training process > missing zero_grad)",
           expected={"exploding-gradients", "loss-divergence"},
           allowed={"update-too-large", "dead-units", "loss-spike", "no-progress", "premature-plateau",
                    "update-too-small"})
def _no_zero_grad(fixed: bool = False) -> Setup:
    module = FaultModule(small_cnn(), _sgd(0.01, momentum=0.9), zero_grad=fixed)
    return _run(module, digits(shape="image"), 350)


@_scenario("steplr-stepped-per-batch", "resnet",
           "StepLR(step_size=8, gamma=0.1) meant per epoch but registered with interval='step': the lr is cut "
           "10x every 8 batches, 1e-6 of its peak by step 48 (DeepFD: learning rate; Humbatova: training process "
           "> wrong lr schedule)", expected={"lr-collapse"},
           allowed={"premature-plateau", "update-too-small", "no-progress"})
def _steplr_per_batch(fixed: bool = False) -> Setup:
    module = FaultModule(SmallResNet(16), _sgd(0.1, momentum=0.9, weight_decay=5e-4),
                         scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 8, 0.1),
                         interval="epoch" if fixed else "step")
    return _run(module, digits(shape="image", batch_size=64), 160)


@_scenario("grad-clip-tiny-lstm", "lstm",
           "gradient_clip_val=1e-4 (meant 1.0): every update is strangled to a 1e-5 step, the LSTM does not move "
           "(Humbatova: training process > hyperparameters)", expected={"update-too-small"},
           allowed={"no-progress", "premature-plateau"})
def _tiny_clip(fixed: bool = False) -> Setup:
    module = ScenarioModule(SeqLSTM(64), _sgd(0.5, momentum=0.9))
    return _run(module, digits(shape="seq"), 450, gradient_clip_val=1.0 if fixed else 1e-4)


@_scenario("adam-lr-too-high-cnn", "cnn",
           "Adam at lr 0.1 (50x the usual): the first steps throw the weights around and most ReLU channels die; "
           "the loss stalls near chance (DeepFD: learning rate)", expected={"dead-units", "exploding-gradients"},
           allowed={"no-progress", "premature-plateau", "update-too-large", "loss-spike",
                    "update-too-small"})
def _adam_high(fixed: bool = False) -> Setup:
    return _run(ScenarioModule(small_cnn(), _adam(2e-3 if fixed else 0.1)), digits(shape="image"), 350)


@_scenario("adam-eps-one-transformer", "transformer",
           "Adam with eps=1.0 (a config typo for 1e-8): the denominator is ~1, so Adam acts as SGD with lr 3e-3 "
           "on tiny raw gradients -- updates ~1e-5 of the weights, the loss crawls (DeepFD: optimizer)",
           expected={"update-too-small"}, allowed={"no-progress", "premature-plateau"})
def _adam_eps(fixed: bool = False) -> Setup:
    opt = functools.partial(torch.optim.Adam, lr=3e-3, eps=1e-8 if fixed else 1.0)
    return _run(ScenarioModule(SeqTransformer(), opt), digits(shape="seq"), 220)


@_scenario("momentum-0999-mlp", "mlp",
           "SGD momentum 0.999 with lr 0.05 (effective lr 50): the iterate overshoots in ever larger swings "
           "and the loss climbs from ~0.4 back above chance and stays; most ReLUs die on the way (DeepFD: "
           "optimizer; AUTOTRAINER: oscillating loss)", expected={"loss-divergence"},
           allowed={"update-too-large", "dead-units", "loss-spike", "exploding-gradients", "no-progress",
                    "premature-plateau"})
def _momentum(fixed: bool = False) -> Setup:
    return _run(ScenarioModule(_net(), _sgd(0.05, momentum=0.9 if fixed else 0.999)), digits(), 700)


def _head_groups(head: Callable[[nn.Module], nn.Module], backbone_lr: float, head_lr: float
                 ) -> Callable[[nn.Module], list[dict[str, Any]]]:
    """Two param groups: the module ``head(net)`` at ``head_lr``, everything else (the backbone) at ``backbone_lr``."""
    def groups(net: nn.Module) -> list[dict[str, Any]]:
        head_params = list(head(net).parameters())
        ids = {id(p) for p in head_params}
        return [{"params": [p for p in net.parameters() if id(p) not in ids], "lr": backbone_lr},
                {"params": head_params, "lr": head_lr}]

    return groups


def _last(net: nn.Module) -> nn.Module:
    return net[-1]  # type: ignore[index]


@_scenario("lr-zero-backbone-groups", "cnn",
           "layer-wise lr computed with integer arithmetic (lr * (decay ** depth // 1)): 0 for every conv layer, "
           "only the head trains, on random features (DeepFD: learning rate)", expected={"unchanged-parameters"},
           allowed={"premature-plateau", "layers-not-learning", "update-too-small", "no-progress"})
def _lr_zero(fixed: bool = False) -> Setup:
    module = FaultModule(small_cnn(), _sgd(0.05, momentum=0.9),
                         groups=_head_groups(_last, 0.05 if fixed else 0.0, 0.05))
    return _run(module, digits(shape="image"), 350)


@_scenario("backbone-lr-1e-4x-cnn", "cnn",
           "a fine-tuning recipe (backbone lr = 1e-4 x head lr) applied to a randomly initialised backbone: the "
           "convolutions move 1e-4 as fast as the head and stay random (Humbatova: training process > "
           "hyperparameters; DeepFD: learning rate)", expected={"layers-not-learning"},
           allowed={"premature-plateau", "update-too-small"})
def _slow_backbone(fixed: bool = False) -> Setup:
    module = FaultModule(small_cnn(), _sgd(0.05, momentum=0.9),
                         groups=_head_groups(_last, 0.05 if fixed else 5e-6, 0.05))
    return _run(module, digits(shape="image"), 350)


# ----------------------------------------------------------------------------------------------------------------
# over-regularisation (Humbatova: model > regularisation; DeepFD: hyperparameters)
# ----------------------------------------------------------------------------------------------------------------
@_scenario("l2-too-strong-mlp", "mlp",
           "SGD weight_decay=1.0 (L2 meant 1e-4): the weights shrink towards 0 every step and the loss stays far "
           "above a good one (Humbatova: model > regularisation)", expected={"over-regularization"},
           allowed={"premature-plateau", "no-progress", "update-too-large", "vanishing-gradients"})
def _l2(fixed: bool = False) -> Setup:
    module = ScenarioModule(_net(), _sgd(0.05, momentum=0.9, weight_decay=1e-4 if fixed else 1.0))
    return _run(module, digits(), 700)


@_scenario("adamw-wd-5-cnn", "cnn",
           "AdamW weight_decay=5 (meant 5e-4): decoupled decay removes 1% of every weight per step; weight norms "
           "fall for the whole run and the loss stays high (Humbatova: model > regularisation)",
           expected={"over-regularization"}, allowed={"premature-plateau", "no-progress", "update-too-large"})
def _adamw_wd(fixed: bool = False) -> Setup:
    module = ScenarioModule(small_cnn(), _adam(2e-3, weight_decay=5e-4 if fixed else 5.0, decoupled=True))
    return _run(module, digits(shape="image"), 350)


def _dropout_net(p: float, hidden: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Dropout(p), nn.Linear(hidden, 10))


@_scenario("dropout-0.9-mlp", "mlp",
           "dropout p=0.9 (keep probability mixed up with drop probability) after both hidden layers: training "
           "loss stays high and noisy, validation far behind the fixed run (Humbatova: model > regularisation)",
           expected={"over-regularization"}, allowed={"premature-plateau", "no-progress"})
def _dropout(fixed: bool = False) -> Setup:
    return _run(ScenarioModule(_dropout_net(0.1 if fixed else 0.9), _adam(1e-3)), digits(), 600)


@_scenario("label-smoothing-0.9-transformer", "transformer",
           "CrossEntropyLoss(label_smoothing=0.9) (meant 0.1): the target is almost uniform, the training loss "
           "can barely fall below log(10) and the classifier stays unsure (Humbatova: model > loss function / "
           "regularisation)", expected={"over-regularization"}, allowed={"no-progress", "premature-plateau"})
def _label_smoothing(fixed: bool = False) -> Setup:
    smoothing = 0.1 if fixed else 0.9
    module = FaultModule(SeqTransformer(), _adam(3e-3),
                         criterion=lambda out, y: F.cross_entropy(out, y, label_smoothing=smoothing))
    return _run(module, digits(shape="seq"), 220)


# ----------------------------------------------------------------------------------------------------------------
# frozen or detached parts (Humbatova: model > wrong tensor flow / frozen layers)
# ----------------------------------------------------------------------------------------------------------------
@_scenario("detached-encoder-transformer", "transformer",
           "the encoder output is .detach()-ed before pooling: embedding and encoder never get a gradient, only "
           "the head learns on random features (Humbatova: model > wrong tensor flow)",
           expected={"unchanged-parameters"}, allowed={"premature-plateau", "no-progress", "layers-not-learning"})
def _detached(fixed: bool = False) -> Setup:
    return _run(ScenarioModule(DetachedTransformer(detach=not fixed), _adam(3e-3)), digits(shape="seq"), 300)


@_scenario("hf-bert-backbone-lr-1e-7", "hf",
           "tiny BERT (from a config) with AdamW param groups: backbone lr 1e-7 (typo for 3e-3), head lr 1e-2: "
           "everything below the head moves ~1e-4 as fast as the head (Humbatova: training process > "
           "hyperparameters; DeepFD: learning rate)", expected={"layers-not-learning"},
           allowed={"premature-plateau", "update-too-small"})
def _bert_backbone_lr(fixed: bool = False) -> Setup:
    module = FaultModule(HFClassifier("bert"), _adam(1e-2, weight_decay=0.01, decoupled=True),
                         groups=_head_groups(lambda net: net.head, 3e-3 if fixed else 1e-7, 1e-2))
    return _run(module, digits(shape="seq"), 160)


# ----------------------------------------------------------------------------------------------------------------
# numeric overflow (Humbatova: model > numerical instability; DeepFD: loss function)
# ----------------------------------------------------------------------------------------------------------------
class NaiveAttentionTransformer(nn.Module):
    """Pre-norm transformer over digit rows whose single-head self-attention is written by hand: unscaled scores
    ``q @ k.T`` and ``exp(s) / exp(s).sum()`` without subtracting the max (``stable=True``: ``torch.softmax``)."""

    def __init__(self, stable: bool = False, d: int = 32, layers: int = 2):
        super().__init__()
        self.stable = stable
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.randn(1, 8, d) * 0.02)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d), "norm2": nn.LayerNorm(d),
            "ff": nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))}) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def attend(self, x: Tensor) -> Tensor:
        q, k, v = x.chunk(3, -1)
        scores = q @ k.transpose(1, 2)
        if self.stable:
            weights = torch.softmax(scores, -1)
        else:  # overflows to inf once a score passes ~88; inf / inf = NaN
            e = torch.exp(scores)
            weights = e / e.sum(-1, keepdim=True)
        return weights @ v

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x) + self.pos
        for b in self.blocks:
            h = h + b["proj"](self.attend(b["qkv"](b["norm1"](h))))
            h = h + b["ff"](b["norm2"](h))
        return self.head(self.norm(h.mean(1)))


@_scenario("naive-softmax-attention-overflow", "transformer",
           "hand-written attention softmax, exp(scores) / sum without max subtraction (and without 1/sqrt(d)): "
           "as Adam sharpens the attention a score passes 88, exp() overflows and everything turns NaN "
           "(Humbatova: model > numerical instability)", expected={"non-finite"},
           allowed={"loss-spike", "loss-divergence", "exploding-gradients", "no-progress", "premature-plateau"})
def _naive_softmax(fixed: bool = False) -> Setup:
    return _run(ScenarioModule(NaiveAttentionTransformer(stable=fixed), _adam(1e-2)), digits(shape="seq"), 250)


def _naive_bce(logits: Tensor, y: Tensor) -> Tensor:
    """Hand-written one-vs-rest binary cross-entropy on sigmoid probabilities: sigmoid rounds to exactly 1.0
    above ~17, log(1 - 1) = -inf, and 0 * -inf = NaN."""
    p = torch.sigmoid(logits)
    t = F.one_hot(y, logits.shape[-1]).to(p.dtype)
    return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()


def _bce_with_logits(logits: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, F.one_hot(y, logits.shape[-1]).to(logits.dtype))


@_scenario("log-zero-bce-mlp", "mlp",
           "hand-written BCE (log(p), log(1-p) on sigmoid outputs): once a logit passes ~17 the sigmoid is exactly "
           "1.0, log(0) = -inf and the loss turns NaN mid-run (Humbatova: model > numerical instability; DeepFD: "
           "loss function)", expected={"non-finite"},
           allowed={"loss-spike", "loss-divergence", "exploding-gradients", "no-progress", "premature-plateau"})
def _log_zero(fixed: bool = False) -> Setup:
    module = FaultModule(_net(256), _adam(3e-3), criterion=_bce_with_logits if fixed else _naive_bce)
    return _run(module, digits(), 700)


@_scenario("fp16-adam-no-scaler-mlp", "mlp",
           "model.half() trained with Adam, no GradScaler or float32 master weights: eps=1e-8 rounds to 0 in "
           "float16, zero gradients give 0/0 and the weights turn NaN in the first steps (Humbatova: training "
           "process > mixed precision; DeepFD: optimizer)", expected={"non-finite"},
           allowed={"no-progress", "premature-plateau", "loss-divergence"})
def _fp16(fixed: bool = False) -> Setup:
    return _run(FaultModule(_net(), _adam(1e-3), half=not fixed), digits(), 300)


# ----------------------------------------------------------------------------------------------------------------
# late instability (DeepFD: learning rate; AUTOTRAINER: exploding gradient)
# ----------------------------------------------------------------------------------------------------------------
def _exponential_warmup(rate: float, cap_step: int | None) -> Callable[[int], float]:
    """lr factor ``rate ** step``, held from ``cap_step`` on (``None``: never capped)."""
    return lambda step: rate ** (step if cap_step is None else min(step, cap_step))


@_scenario("hf-gpt2-uncapped-warmup", "hf",
           "tiny GPT-2 (from a config), AdamW with an exponential warm-up (x1.038 per step) that was never capped "
           "at its intended end (step 60): healthy while the lr is small, diverges late as the lr climbs to 1700x "
           "its base (DeepFD: learning rate)", expected={"loss-divergence"},
           allowed={"loss-spike", "update-too-large", "exploding-gradients", "premature-plateau", "no-progress"})
def _late_warmup(fixed: bool = False) -> Setup:
    module = ScenarioModule(HFClassifier("gpt2"), _adam(5e-4, decoupled=True),
                            schedule=_exponential_warmup(1.038, 60 if fixed else None))
    return _run(module, digits(shape="seq"), 200)
