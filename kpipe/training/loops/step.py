"""The ``step`` loop: a `keras.Model` subclass whose `train_step` / `test_step` kpipe writes, the Keras 3 way.

`KpipeModel` is a functional model (built from the layers of any model) whose
`train_step` is spelled out, so that users can change one piece of it in a
subclass and still get everything `fit` gives (callbacks, progress bar,
distribution, validation):

================================  ===============================================================
extension point                   default
================================  ===============================================================
``clip_norm`` (attribute)         `None`: no clipping; a float clips gradients by global norm
``accumulation_steps``            1: apply every batch; ``k``: the optimizer's
                                  ``gradient_accumulation_steps`` (averages ``k`` batches' gradients)
``extra_loss(x, y, y_pred, sw)``  `None`: nothing added; return a scalar to add to the loss
``transform_gradients(grads)``    clip by global norm when ``clip_norm`` is set
``apply_update(grads)``           ``optimizer.apply``
================================  ===============================================================

Example:
    A subclass in ``my_steps.py``, used with
    ``kpipe train prepared/manifest.json --loop step --step-model my_steps.py:Smooth``::

        import keras
        from kpipe.training import KpipeModel

        class Smooth(KpipeModel):
            clip_norm = 1.0                  # clip gradients by global norm

            def extra_loss(self, x, y, y_pred, sample_weight):
                # penalize over-confident predictions (entropy bonus)
                return -0.01 * keras.ops.mean(keras.ops.sum(-y_pred * keras.ops.log(y_pred + 1e-7), axis=-1))

The steps themselves are the backend's (`kpipe.training.loops.native`):
`KpipeModel` inherits ``train_step`` / ``test_step`` from the ``StepMixin``
of ``native_tensorflow`` (`tf.GradientTape`), ``native_jax`` (a pure
function of the variables' values differentiated by `jax.value_and_grad`:
``train_step(state, data) -> (logs, state)``) or ``native_torch``
(``loss.backward()``). The extension points are the same on every backend:
write them with `keras.ops` and Keras calls (the optimizer, metrics), and one
subclass trains on TensorFlow, JAX and PyTorch.

Reference: the Keras guides "Customizing what happens in fit()" with
TensorFlow, JAX and PyTorch (keras.io/guides), and each backend's
``Trainer.train_step`` (keras/src/backend/*/trainer.py), which the steps
follow line by line before adding the extension points.
"""

from __future__ import annotations

import inspect
from typing import Any

import keras

from kpipe._validation import check_number, check_positive_int
from kpipe.errors import ArgumentError, KpipeError
from kpipe.training.loading import load_object
from kpipe.training.loops import native
from kpipe.training.loops.base import with_options
from kpipe.training.loops.fit import FitLoop

# Keras >= 3.5 passes `training` to `Model.compute_loss` (regularization losses count in training only).
_COMPUTE_LOSS_TAKES_TRAINING = "training" in inspect.signature(keras.Model.compute_loss).parameters


def global_norm(tensors: list[Any]) -> Any:
    """``sqrt(sum of squares)`` over a list of tensors (`None` entries skipped), float32 scalar."""
    squares = [keras.ops.sum(keras.ops.square(keras.ops.cast(t, "float32"))) for t in tensors if t is not None]
    return keras.ops.sqrt(keras.ops.sum(keras.ops.stack(squares))) if squares else keras.ops.zeros(())


def clip_by_global_norm(grads: list[Any], clip_norm: float) -> tuple[list[Any], Any]:
    """Scale ``grads`` by ``min(1, clip_norm / global_norm)``, as `tf.clip_by_global_norm`.

    Args:
        grads: Gradients, one per variable (`None` allowed).
        clip_norm: Largest global norm kept (> 0).

    Returns:
        ``(clipped gradients, global norm before clipping)``.
    """
    norm = global_norm(grads)
    scale = keras.ops.minimum(1.0, clip_norm / keras.ops.maximum(norm, 1e-12))
    clipped = [None if g is None else g * keras.ops.cast(scale, g.dtype) for g in grads]
    return clipped, norm


@keras.saving.register_keras_serializable(package="kpipe")
class KpipeModel(native().StepMixin, keras.Model):
    """A functional `keras.Model` with a kpipe `train_step` / `test_step` and extension points.

    Build it from any model with `KpipeModel.wrap(model)`, or directly as a
    functional model: ``KpipeModel(inputs=..., outputs=...)``. Subclass it
    and override `extra_loss`, `transform_gradients` or `apply_update`, or
    set the class attributes ``clip_norm`` and ``accumulation_steps``.
    ``train_step`` / ``test_step`` come from the backend's ``StepMixin``
    (`kpipe.training.loops.native`); the extension points are the same on
    TensorFlow, JAX and PyTorch.

    Args:
        *args: As `keras.Model` (functional: ``inputs``, ``outputs``, ``name``).
        clip_norm: Clip gradients to this global norm (float > 0). Defaults to
            the class attribute (`None`: no clipping).
        accumulation_steps: Apply the averaged gradients of this many batches
            at once (int >= 1), through the optimizer's
            ``gradient_accumulation_steps`` (set by `compile`). Defaults to the
            class attribute (1).
        **kwargs: As `keras.Model`.

    Attributes:
        gradient_norm: A `keras.metrics.Mean` of the global gradient norm
            before clipping, reported as ``gradient_norm`` in the logs when
            ``clip_norm`` is set.

    Example:
        >>> model = KpipeModel.wrap(default_model((8, 8, 1), 10), clip_norm=1.0)
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        >>> model.fit(train, validation_data=val, epochs=5, shuffle=False)
    """

    clip_norm: float | None = None
    accumulation_steps: int = 1

    def __init__(self, *args: Any, clip_norm: float | None = None, accumulation_steps: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clip_norm = check_number(self.clip_norm if clip_norm is None else clip_norm, "clip_norm", minimum=0,
                                      exclusive_minimum=True, allow_none=True)
        self.accumulation_steps = check_positive_int(
            self.accumulation_steps if accumulation_steps is None else accumulation_steps, "accumulation_steps")
        self.gradient_norm = keras.metrics.Mean(name="gradient_norm") if self.clip_norm else None

    # ------------------------------------------------------------ building
    @classmethod
    def wrap(cls, model: keras.Model, **kwargs: Any) -> KpipeModel:
        """A ``cls`` sharing the layers and weights of ``model`` (see `wrap_model`)."""
        return wrap_model(model, cls, **kwargs)

    def compile(self, optimizer: Any = "rmsprop", *args: Any, **kwargs: Any) -> None:
        """As `keras.Model.compile`; with ``accumulation_steps > 1`` the optimizer accumulates the gradients.

        The optimizer gets ``gradient_accumulation_steps=accumulation_steps``
        (a copy of it is made when it was created without).
        """
        optimizer = keras.optimizers.get(optimizer)
        if self.accumulation_steps > 1:
            optimizer = with_options(optimizer, gradient_accumulation_steps=self.accumulation_steps)
        super().compile(optimizer, *args, **kwargs)

    # ------------------------------------------------------ extension points
    def extra_loss(self, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> Any:
        """An extra term added to the compiled loss (train and validation). Default: none.

        Args:
            x: The batch inputs, e.g. float32 ``(batch, H, W, C)``.
            y: The labels as the generator makes them.
            y_pred: The model outputs, e.g. float32 ``(batch, num_classes)``.
            sample_weight: float32 ``(batch,)`` or `None`.

        Returns:
            A scalar tensor, or `None` for nothing.
        """
        return None

    def transform_gradients(self, grads: list[Any]) -> list[Any]:
        """Change the gradients before they are applied. Default: clip by global norm if ``clip_norm``.

        With mixed precision, ``grads`` are scaled by the loss scale; clipping
        unscales first, so ``clip_norm`` is in the units of the true gradients.
        Use `keras.ops` here: the gradients are `tf.Tensor`, JAX arrays
        (traced, inside a `keras.StatelessScope`) or torch tensors (under
        `torch.no_grad`) depending on the backend.

        Args:
            grads: One gradient per trainable variable (same order as
                ``self.trainable_variables``), possibly `None`.

        Returns:
            The gradients to apply, same structure.
        """
        if not self.clip_norm:
            return grads
        scale = self._loss_scale()
        unscaled = grads if scale is None else [None if g is None else g / keras.ops.cast(scale, g.dtype)
                                                for g in grads]
        clipped, norm = clip_by_global_norm(unscaled, float(self.clip_norm))
        if self.gradient_norm is not None:
            self.gradient_norm.update_state(norm)
        if scale is None:
            return clipped
        return [None if g is None else g * keras.ops.cast(scale, g.dtype) for g in clipped]

    def apply_update(self, grads: list[Any]) -> None:
        """Apply ``grads`` with the optimizer: ``apply_optimizer(grads)``.

        ``apply_optimizer`` is the backend's form of
        `keras.optimizers.Optimizer.apply` (on JAX: ``stateless_apply`` on the
        current values, whose results are assigned, as Keras' JAX trainer
        does; a `LossScaleOptimizer`'s ``apply`` cannot run under `jax.jit`).
        With ``accumulation_steps = k > 1`` the optimizer averages ``k``
        consecutive batches' gradients and updates the weights once every
        ``k`` calls (Keras' ``gradient_accumulation_steps``; its
        ``iterations`` counts applied updates).
        """
        self.apply_optimizer(grads)

    # ------------------------------------------------------------- the loss
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss (plus regularization losses), plus `extra_loss`."""
        extra_kwargs = {"training": training} if _COMPUTE_LOSS_TAKES_TRAINING else {}
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, **extra_kwargs)
        extra = self.extra_loss(x, y, y_pred, sample_weight)
        if extra is not None:
            loss = loss + keras.ops.cast(extra, loss.dtype)
        return loss

    # ------------------------------------------------------------- helpers
    def _update_loss_metric(self, loss: Any, x: Any) -> None:
        """Update the ``loss`` metric as Keras does: mean over batches weighted by batch size.

        Under a strategy with N replicas a Keras loss is divided by N per
        replica; the metric undoes that so that it shows the true loss.
        """
        replicas = self.num_replicas()  # the backend's StepMixin says
        first = keras.tree.flatten(x)[0]
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss * replicas, sample_weight=keras.ops.shape(first)[0])
                break

    def _test_results(self, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> dict[str, Any]:
        """`compute_metrics` of an evaluation step, without the training-only ``gradient_norm``."""
        results = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if self.gradient_norm is not None:  # a training-only metric: no val_gradient_norm
            results.pop(self.gradient_norm.name, None)
        return results

    def _loss_scale(self) -> Any:
        optimizer = self.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            # as LossScaleOptimizer.scale_loss: the variable exists once the optimizer is built
            return optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
        return None


def wrap_model(model: keras.Model, cls: type[keras.Model] | None = None, **kwargs: Any) -> keras.Model:
    """Rebuild ``model`` as a functional ``cls`` (default `KpipeModel`) sharing its layers and weights.

    A functional model is rebuilt from its own inputs and outputs (same
    layers, same names); any other built model (subclassed, Sequential) is
    called on new `keras.Input` tensors.

    Args:
        model: The model to wrap (built).
        cls: A `keras.Model` subclass whose constructor accepts the functional
            arguments ``inputs``, ``outputs``, ``name``. Defaults to `KpipeModel`.
        **kwargs: More constructor arguments (``clip_norm``, ``accumulation_steps``...).

    Returns:
        The ``cls`` instance.

    Raises:
        KpipeError: If ``model`` is not built or ``cls`` cannot be built functionally.
    """
    cls = cls or KpipeModel
    if type(model) is cls and not kwargs:
        return model
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        try:
            inputs = keras.Input(shape=tuple(model.input_shape[1:]))
        except (AttributeError, ValueError):
            raise KpipeError(f"Cannot wrap the model {model.name!r}: build it (call it once) first.") from None
        outputs = model(inputs)
    if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        inputs = inputs[0]  # a single tensor, not a list of one: Keras checks the structure of calls
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        outputs = outputs[0]
    try:
        wrapped = cls(inputs=inputs, outputs=outputs, name=model.name, **kwargs)
    except TypeError as e:
        raise KpipeError(
            f"The step model class {cls.__name__} must accept the functional arguments "
            f"`inputs`, `outputs`, `name` (and pass **kwargs to keras.Model): {e}"
        ) from None
    return wrapped


def load_step_model_class(spec: str | type | None) -> type[keras.Model]:
    """The model class named by ``spec`` (``module:Class`` / ``path.py:Class``), or `KpipeModel`.

    Args:
        spec: `None` / ``"default"`` for `KpipeModel`; a class, or its
            ``module:Class`` / ``path.py:Class`` name. Subclass `KpipeModel` to
            reuse its extension points; any `keras.Model` subclass with its own
            `train_step` that accepts the functional constructor also works.

    Raises:
        LoadError: If it cannot be imported.
        ArgumentError: If it is not a `keras.Model` subclass.
    """
    if spec in (None, "", "default"):
        return KpipeModel
    cls = load_object(spec, what="step model class") if isinstance(spec, str) else spec
    if not (isinstance(cls, type) and issubclass(cls, keras.Model)):
        raise ArgumentError(
            f"The step model must be a subclass of kpipe.training.KpipeModel (or keras.Model). "
            f"Received: step_model={spec!r} ({type(cls).__name__})"
        )
    _check_train_step_form(cls, spec)
    return cls


def _check_train_step_form(cls: type[keras.Model], spec: Any) -> None:
    """Refuse a ``train_step`` written for another backend: JAX's takes ``(state, data)``, the others ``(data)``.

    Raises:
        ArgumentError: If ``cls`` defines its own ``train_step`` whose positional
            arguments are not those Keras passes on the backend in use.
    """
    step = cls.train_step
    if step in (KpipeModel.train_step, keras.Model.train_step):
        return
    positional = [p.name for p in inspect.signature(step).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(step).parameters.values()):
        return
    on_jax = keras.backend.backend() == "jax"
    if (len(positional) >= 3) == on_jax:
        return
    wanted = "train_step(self, state, data) -> (logs, state)" if on_jax else "train_step(self, data) -> logs"
    raise ArgumentError(
        f"The step model {cls.__name__} writes train_step({', '.join(positional)}), but on the "
        f"{keras.backend.backend()} backend Keras calls {wanted}. Write it for this backend, or override only "
        f"KpipeModel's hooks (extra_loss, transform_gradients, apply_update), which run on every backend. "
        f"Received: step_model={spec!r}"
    )


class StepLoop(FitLoop):
    """`KpipeModel` (or the ``step_model`` subclass) run by `fit`: the training step is kpipe's code.

    ``clip_norm`` and ``accumulation_steps`` go to the `KpipeModel`
    (``transform_gradients`` clips and logs ``gradient_norm``; the optimizer
    accumulates); a model class that is not a `KpipeModel` gets the
    accumulating optimizer but no clipping.
    """

    name = "step"

    def prepare(self, net: keras.Model, loss: keras.losses.Loss) -> keras.Model:
        cls = load_step_model_class(self.config.step_model)
        kwargs: dict[str, Any] = {}
        if issubclass(cls, KpipeModel):
            kwargs = {"clip_norm": self.config.clip_norm, "accumulation_steps": self.config.accumulation_steps}
        model = wrap_model(net, cls, **{k: v for k, v in kwargs.items() if v not in (None, 1)})
        model.compile(optimizer=self.optimizer(), loss=loss, metrics=self.compiled_metrics())
        model.optimizer.build(model.trainable_variables)  # its variables exist before train_step is traced
        return model

    def logged(self) -> list[str]:
        return ["gradient_norm"] if self.config.clip_norm else []
