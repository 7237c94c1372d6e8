"""The multi-task Keras model: shared encoder, neck, detection / segmentation / depth decoders."""
