"""Export-time rewrite: a 1x1 conv over a channel concatenation becomes a sum of 1x1 convs, one per part.

    conv(concat(a, b)) = conv[:a](a) + conv[a:](b)        (kernel split along its input channels)

The same function in float, but an int8 TFLite CONCATENATION gives every input the output's one
scale. The heads' decoders (models/blocks.dense_head) concatenate a squeezed ReLU feature (0..6)
with the encoder's stride-2 skip (about +-30), so the feature got a scale of 0.33: 17 steps over its
range: the depth logits carried a 10 % RMS error, 40 % of the int8 depth drift (AbsRel 0.119 -> 0.110
with this rewrite; Keras 0.097). Summed, each conv reads its part at the part's own scale and only
the (few-channel) sum is requantised. It is also cheaper: the wide concatenated map is never written.

A part that is itself linear (a 1x1 conv, then an inference BatchNorm, no activation: an MBConv
block's projection, such as the encoder's stride-2 skip) is folded further: the three linear maps
become one 1x1 conv on the projection's input,

    conv[part](bn(project(a))) = (project . bn . conv[part])(a)      (one kernel, one bias)

so the decoder reads the block's ReLU6 feature (0..6, int8 scale 0.024) instead of the projected
+-30 tensor (int8 scale 0.30) whose rounding was the rest of the int8 depth drift. The projected
tensor is still computed for the encoder's next block; only the decoder's path skips its rounding.

Used like serving.int8_friendly: layers read the patched `call` while the export traces the graph
inside the block, and get their own back afterwards; the unused concatenation is pruned by the
converter.
"""
from __future__ import annotations

import contextlib

import keras
from keras import ops


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def concat_conv_pairs(net) -> list[tuple[keras.layers.Concatenate, keras.layers.Conv2D]]:
    """(concatenation, 1x1 conv) pairs where the conv is the concatenation's only consumer."""
    pairs = []
    for layer in _all_layers(net):
        if not isinstance(layer, keras.layers.Conv2D) or tuple(layer.kernel_size) != (1, 1):
            continue
        if type(layer) is not keras.layers.Conv2D or len(layer._inbound_nodes) != 1:  # noqa: SLF001
            continue
        (tensor,) = layer._inbound_nodes[0].input_tensors  # noqa: SLF001
        producer = tensor._keras_history.operation  # noqa: SLF001
        if (isinstance(producer, keras.layers.Concatenate) and producer.axis in (-1, 3)
                and len(producer._outbound_nodes) == 1 and layer.data_format == "channels_last"):  # noqa: SLF001
            pairs.append((producer, layer))
    return pairs


def _is_linear_1x1(layer) -> bool:
    return (type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1)
            and tuple(layer.strides) == (1, 1) and layer.groups == 1 and layer.data_format == "channels_last"
            and layer.activation in (None, keras.activations.linear))


def _producer(tensor):
    """The layer that computes a Keras tensor, looking inside nested functional models (the encoder)."""
    operation, _, index = tensor._keras_history  # noqa: SLF001
    while isinstance(operation, keras.Model) and getattr(operation, "outputs", None):
        tensor = operation.outputs[index]
        operation, _, index = tensor._keras_history  # noqa: SLF001
    return operation


def linear_projection(tensor):
    """(1x1 conv, BatchNorm) when the Keras tensor is BatchNorm(linear 1x1 conv(...)), else None."""
    norm = _producer(tensor)
    if not isinstance(norm, keras.layers.BatchNormalization) or norm.axis not in (-1, 3):
        return None
    if len(norm._inbound_nodes) != 1:  # noqa: SLF001
        return None
    (inner,) = norm._inbound_nodes[0].input_tensors  # noqa: SLF001
    project = _producer(inner)
    if not _is_linear_1x1(project) or len(project._inbound_nodes) != 1:  # noqa: SLF001
        return None
    return project, norm


def _folded(project, norm, kernel):
    """(kernel, bias) of x -> conv(kernel)(norm(project(x))) as one 1x1 conv (norm in inference)."""
    channels = project.filters
    scale = ops.rsqrt(ops.add(norm.moving_variance, norm.epsilon))
    if norm.gamma is not None:
        scale = ops.multiply(scale, norm.gamma)
    shift = ops.multiply(ops.negative(norm.moving_mean), scale)
    if norm.beta is not None:
        shift = ops.add(shift, norm.beta)
    if project.use_bias:
        shift = ops.add(shift, ops.multiply(project.bias, scale))
    after = ops.reshape(kernel, (channels, -1))                                   # [mid, out]
    before = ops.multiply(ops.reshape(project.kernel, (-1, channels)), scale)     # [in, mid]
    folded = ops.reshape(ops.matmul(before, after), (1, 1, -1, after.shape[-1]))
    return folded, ops.matmul(ops.reshape(shift, (1, channels)), after)[0]


def _split_call(conv, parts_of, made_by):
    """conv.call that, given a concatenation's output, convolves its parts and sums (a linear part
    folded into its projection, see the module docstring)."""
    original = conv.call

    def call(inputs):
        entry = parts_of.get(id(inputs))
        if entry is None or entry[0] is not inputs:
            return original(inputs)
        parts = entry[1]
        outputs, start = None, 0
        for part in parts:
            channels = part.shape[-1]
            kernel, bias = conv.kernel[:, :, start:start + channels, :], None
            chain = _projection_input(part, made_by)
            if chain is not None:
                (project, norm), part = chain
                kernel, bias = _folded(project, norm, kernel)
            term = conv.convolution_op(part, kernel)
            if outputs is None and conv.use_bias:  # on the first term the converter fuses it into that conv
                bias = conv.bias if bias is None else ops.add(bias, conv.bias)
            if bias is not None:
                term = ops.add(term, ops.reshape(bias, (1, 1, 1, conv.filters)))
            outputs = term if outputs is None else ops.add(outputs, term)
            start += channels
        return conv.activation(outputs) if conv.activation is not None else outputs
    return call


def _projection_input(part, made_by):
    """((project, norm), input of project) when the traced `part` came out of a foldable chain."""
    norm_entry = made_by.get(id(part))
    if norm_entry is None or norm_entry[0] is not part:
        return None
    _, inner, norm = norm_entry
    project_entry = made_by.get(id(inner))
    if project_entry is None or project_entry[0] is not inner:
        return None
    _, source, project = project_entry
    return (project, norm), source


def _remembering_call(concat, parts_of):
    original = concat.call

    def call(inputs):
        output = original(inputs)
        # id -> (output, parts): holding the output keeps its id from being reused by another tensor
        parts_of[id(output)] = (output, list(inputs))
        return output
    return call


def _tracing_call(layer, made_by):
    """layer.call that remembers which input each output came from (output id -> (output, input, layer))."""
    original = layer.call

    def call(inputs, *args, **kwargs):
        output = original(inputs, *args, **kwargs)
        made_by[id(output)] = (output, inputs, layer)
        return output
    return call


@contextlib.contextmanager
def split_concat_convs(net):
    """Within the block, every concat -> 1x1 conv pair of `net` computes as a sum of convs; yields
    the conv layers' names."""
    pairs = concat_conv_pairs(net)
    parts_of: dict[int, tuple] = {}
    made_by: dict[int, tuple] = {}
    traced = {}
    for concat, conv in pairs:
        for part in concat._inbound_nodes[0].input_tensors:  # noqa: SLF001
            for layer in linear_projection(part) or ():
                traced[id(layer)] = layer
    for layer in traced.values():
        layer.call = _tracing_call(layer, made_by)
    for concat, conv in pairs:
        concat.call = _remembering_call(concat, parts_of)
        conv.call = _split_call(conv, parts_of, made_by)
    try:
        yield [conv.name for _, conv in pairs]
    finally:
        for concat, conv in pairs:
            del concat.call, conv.call  # the instance attributes go; the class methods are back
        for layer in traced.values():
            del layer.call
        parts_of.clear()
        made_by.clear()
