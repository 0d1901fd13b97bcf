"""The shared 2D/3D building blocks (tlunet.models.blocks): one code path for both, by spatial_dims."""

import keras
import numpy as np
import pytest

from tlunet.models.blocks import conv_block, decoder_stage, layer_class, segmentation_head


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_conv_block_names_its_layers_and_keeps_the_size(spatial_dims, batchnorm):
    inputs = keras.Input((8,) * spatial_dims + (3,))
    out = conv_block(inputs, 5, name="encoder_block1", spatial_dims=spatial_dims, batchnorm=batchnorm)
    model = keras.Model(inputs, out)
    assert tuple(out.shape[1:]) == (8,) * spatial_dims + (5,)
    names = [layer.name for layer in model.layers[1:]]
    assert all(n.startswith("encoder_block1_") for n in names)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == (2 if batchnorm else 0)
    conv = layer_class("conv", spatial_dims)
    assert sum(isinstance(layer, conv) for layer in model.layers) == 2


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
def test_decoder_stage_upsamples_and_concatenates_the_skip(spatial_dims, upsample):
    deep = keras.Input((4,) * spatial_dims + (8,))
    skip = keras.Input((8,) * spatial_dims + (2,))
    out = decoder_stage(deep, skip, 6, name="decoder_stage0", spatial_dims=spatial_dims, upsample=upsample)
    model = keras.Model([deep, skip], out)
    assert tuple(out.shape[1:]) == (8,) * spatial_dims + (6,)
    concat = model.get_layer("decoder_stage0_concat")
    assert concat.output.shape[-1] == (6 if upsample == "transpose" else 8) + 2
    no_skip = decoder_stage(deep, None, 6, name="decoder_stage1", spatial_dims=spatial_dims, upsample=upsample)
    assert tuple(no_skip.shape[1:]) == (8,) * spatial_dims + (6,)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_anisotropic_upsampling_for_volumes(spatial_dims):
    factor = (1, 2, 2) if spatial_dims == 3 else (1, 2)
    deep = keras.Input((4,) * spatial_dims + (8,))
    out = decoder_stage(deep, None, 4, name="decoder_stage0", spatial_dims=spatial_dims, upsample="nearest",
                        factor=factor)
    assert tuple(out.shape[1:-1]) == tuple(4 * f for f in factor)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("classes,activation,low,high", [(1, "auto", 0, 1), (3, "auto", 0, 1)])
def test_head_activation_in_float32(spatial_dims, classes, activation, low, high):
    inputs = keras.Input((4,) * spatial_dims + (5,))
    out = segmentation_head(inputs, classes, activation=activation, spatial_dims=spatial_dims)
    model = keras.Model(inputs, out)
    y = model.predict(np.random.default_rng(0).normal(size=(2,) + (4,) * spatial_dims + (5,)) * 10, verbose=0)
    assert y.shape[-1] == classes and y.dtype == np.float32 and low <= y.min() and y.max() <= high
    if classes > 1:
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
    assert model.layers[-1].name.startswith("head")


def test_only_2d_and_3d():
    with pytest.raises(ValueError, match="spatial_dims` must be 2 or 3"):
        layer_class("conv", 1)
