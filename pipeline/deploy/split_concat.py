"""Export-time rewrite: a 1x1 conv over a channel concatenation becomes a sum of 1x1 convs, one per part.

    conv(concat(a, b)) = conv[:a](a) + conv[a:](b)        (kernel split along its input channels)

The same function in float, but an int8 TFLite CONCATENATION gives every input the output's one
scale. The heads' decoders (models/blocks.dense_head) concatenate a squeezed ReLU feature (0..6)
with the encoder's stride-2 skip (about +-30), so the feature got a scale of 0.33: 17 steps over its
range: the depth logits carried a 10 % RMS error, 40 % of the int8 depth drift (AbsRel 0.119 -> 0.110
with this rewrite; Keras 0.097). Summed, each conv reads its part at the part's own scale and only
the (few-channel) sum is requantised. It is also cheaper: the wide concatenated map is never written.

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


def _split_call(conv, parts_of):
    """conv.call that, given a concatenation's output, convolves its parts and sums."""
    original = conv.call

    def call(inputs):
        entry = parts_of.get(id(inputs))
        if entry is None or entry[0] is not inputs:
            return original(inputs)
        parts = entry[1]
        outputs, start = None, 0
        for part in parts:
            channels = part.shape[-1]
            term = conv.convolution_op(part, conv.kernel[:, :, start:start + channels, :])
            if outputs is None and conv.use_bias:  # on the first term the converter fuses it into that conv
                term = ops.add(term, ops.reshape(conv.bias, (1, 1, 1, conv.filters)))
            outputs = term if outputs is None else ops.add(outputs, term)
            start += channels
        return conv.activation(outputs) if conv.activation is not None else outputs
    return call


def _remembering_call(concat, parts_of):
    original = concat.call

    def call(inputs):
        output = original(inputs)
        # id -> (output, parts): holding the output keeps its id from being reused by another tensor
        parts_of[id(output)] = (output, list(inputs))
        return output
    return call


@contextlib.contextmanager
def split_concat_convs(net):
    """Within the block, every concat -> 1x1 conv pair of `net` computes as a sum of convs; yields
    the conv layers' names."""
    pairs = concat_conv_pairs(net)
    parts_of: dict[int, tuple] = {}
    for concat, conv in pairs:
        concat.call = _remembering_call(concat, parts_of)
        conv.call = _split_call(conv, parts_of)
    try:
        yield [conv.name for _, conv in pairs]
    finally:
        for concat, conv in pairs:
            del concat.call, conv.call  # the instance attributes go; the class methods are back
        parts_of.clear()
