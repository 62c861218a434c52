"""The lecture's worked convolution example (../shared/lecture-conv-example.md) with the models' Conv layer.

The lecture defines (f * g)[i, j] = sum_m sum_n f[i - m, j - n] g[m, n]; the layer computes
cross-correlation with its kernel as stored, so the lecture's convolution is the layer with
the kernel rotated by 180 degrees.
"""

import numpy as np
from flax import nnx

from cnncli.models.layers import Conv

F = np.array([[3, 3, 2, 1, 0],
              [0, 0, 1, 3, 1],
              [3, 1, 2, 2, 3],
              [2, 0, 0, 2, 2],
              [2, 0, 0, 0, 1]], np.float32)
G = np.array([[2, 1, 0],
              [0, 2, 2],
              [2, 1, 0]], np.float32)
VALID = np.array([[12, 12, 17],
                  [10, 17, 19],
                  [9, 6, 14]], np.float32)
# as printed on the slide: the last column of rows 2-4 (5, 9, 8) does not follow from F and G
SLIDE_PADDED = np.array([[6, 14, 17, 11, 3],
                         [14, 12, 12, 17, 5],
                         [8, 10, 17, 19, 9],
                         [11, 9, 6, 14, 8],
                         [6, 4, 4, 6, 4]], np.float32)


def lecture_convolution(f, g, pad):
    """The lecture's definition, summed literally: out[i, j] = sum_m sum_n f[i - m, j - n] g[m, n].

    With a 3x3 kernel indexed m, n in {-1, 0, 1} (centred) and zeros outside f (`pad` = 1) or
    only the positions where the whole kernel lies on f (`pad` = 0).
    """
    h, w = f.shape
    c = g.shape[0] // 2
    out = np.zeros((h + 2 * pad - 2 * c, w + 2 * pad - 2 * c), np.float32)
    for oi in range(out.shape[0]):
        for oj in range(out.shape[1]):
            i, j = oi - pad + c, oj - pad + c  # centre of the window on f
            total = 0.0
            for m in range(-c, c + 1):
                for n in range(-c, c + 1):
                    if 0 <= i - m < h and 0 <= j - n < w:
                        total += f[i - m, j - n] * g[m + c, n + c]
            out[oi, oj] = total
    return out


def layer_output(kernel, padding, stride=1):
    conv = Conv(1, 1, 3, stride, padding, use_bias=False, rngs=nnx.Rngs(0))
    conv.kernel.value = conv.kernel.value.at[:, :, 0, 0].set(kernel)
    return np.asarray(conv(F[None, :, :, None]))[0, :, :, 0]


def test_valid_convolution_matches_the_slide():
    assert np.array_equal(lecture_convolution(F, G, 0), VALID)
    assert np.array_equal(layer_output(G[::-1, ::-1], 0), VALID)


def test_padded_convolution_and_the_slides_inconsistent_column():
    padded = lecture_convolution(F, G, 1)
    assert np.array_equal(layer_output(G[::-1, ::-1], 1), padded)
    wrong = np.argwhere(padded != SLIDE_PADDED)
    assert wrong.tolist() == [[1, 4], [2, 4], [3, 4]]  # only the last column of rows 2-4
    assert padded[1:4, 4].tolist() == [11, 13, 12] and SLIDE_PADDED[1:4, 4].tolist() == [5, 9, 8]
    # the centre 3x3 of the padded map is the valid map
    assert np.array_equal(padded[1:4, 1:4], VALID)


def test_stride_two_samples_every_second_position():
    out = layer_output(G[::-1, ::-1], 1, stride=2)
    assert np.array_equal(out, lecture_convolution(F, G, 1)[::2, ::2])
    assert out.tolist() == [[6, 17, 3], [8, 17, 13], [6, 4, 4]]


def test_unflipped_kernel_is_cross_correlation_not_the_lectures_convolution():
    out = layer_output(G, 0)
    assert not np.array_equal(out, VALID)
    windows = np.lib.stride_tricks.sliding_window_view(F, (3, 3))
    assert np.array_equal(out, np.einsum("ijmn,mn->ij", windows, G))
