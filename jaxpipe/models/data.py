"""Real datasets that ship offline, as float32 features and int32 labels."""

from __future__ import annotations

import numpy as np

from jaxpipe.errors import DatasetError

__all__ = ["digit_images", "digits"]


def digits(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns the 8x8 handwritten digits as ``(x_train, y_train, x_test, y_test)``.

    The 1797 images of `sklearn.datasets.load_digits` (bundled with scikit-learn, no download)
    are flattened to 64 features and split by a fixed permutation drawn from `seed`, stratified
    per class so both halves hold every digit in proportion. Features are standardised with the
    TRAINING mean and standard deviation (constant pixels are only centred).

    Args:
      test_fraction: share of the samples held out for testing; in (0, 1).
      seed: seed of the split permutation; the same seed gives the same split.

    Returns:
      x_train (n_train, 64) float32, y_train (n_train,) int32, x_test (n_test, 64) float32,
      y_test (n_test,) int32, with labels in 0..9.

    Raises:
      DatasetError: if `test_fraction` is not strictly between 0 and 1.

    Example:
      >>> x_train, y_train, x_test, y_test = digits()
      >>> x_train.shape, x_test.shape, y_train.dtype.name
      ((1438, 64), (359, 64), 'int32')
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"digits() needs 0 < test_fraction < 1; got {test_fraction}.")
    from sklearn.datasets import load_digits  # imported lazily: only the default job needs it

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):  # stratified: hold out the same share of every class
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(test_fraction * len(members))]] = True
    x_train, x_test = x[~test], x[test]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return (x_train.astype(np.float32), y[~test].astype(np.int32),
            x_test.astype(np.float32), y[test].astype(np.int32))


def digit_images(image_size: int = 16, test_fraction: float = 0.2, seed: int = 0,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits of `digits` as RGB images for the image models: each 8x8 image (standardised
    as there) upsampled by pixel repetition to `image_size` x `image_size` and repeated over
    three channels, NHWC float32; the same split and labels.

    Raises:
      DatasetError: `image_size` is not a positive multiple of 8, or a bad `test_fraction`.

    Example:
      >>> x_train, y_train, x_test, y_test = digit_images(16)
      >>> x_train.shape, x_test.shape[0] == 359
      ((1438, 16, 16, 3), True)
    """
    if image_size < 8 or image_size % 8:
        raise DatasetError(f"digit_images() needs a positive multiple of 8; got {image_size}.")
    x_train, y_train, x_test, y_test = digits(test_fraction, seed)
    scale = image_size // 8

    def images(x: np.ndarray) -> np.ndarray:
        square = x.reshape(-1, 8, 8).repeat(scale, axis=1).repeat(scale, axis=2)
        return np.repeat(square[..., None], 3, axis=-1).astype(np.float32)

    return images(x_train), y_train, images(x_test), y_test
