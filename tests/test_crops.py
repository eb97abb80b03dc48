import numpy as np
import pytest

from aivd.edge.crops import crop_windows


def test_crop_is_centred_on_the_box_with_context_and_template_flag():
    image = np.full((200, 300), 255, np.uint8)
    image[90:110, 140:160] = 0  # a 20x20 black square centred at (150, 100)
    template = np.full_like(image, 255)
    (crop,) = crop_windows(image, template, np.array([[140, 90, 160, 110]]), size=48, context=1.5, min_side=0)
    # The window is 30 px wide, so the 20 px square fills the middle two thirds of the crop.
    dark = np.argwhere(crop[0] < 0.5)
    assert dark.min(0).tolist() == pytest.approx([8, 8], abs=1) and dark.max(0).tolist() == pytest.approx([39, 39], abs=1)
    assert crop[1].min() == pytest.approx(1.0) and crop[2].min() == 1.0


def test_without_template_the_template_planes_are_zero_and_edges_repeat():
    image = np.zeros((64, 64), np.uint8)
    (crop,) = crop_windows(image, None, np.array([[0, 0, 10, 10]]))
    assert crop.shape == (3, 48, 48)
    assert not crop[1:].any()
    assert crop_windows(image, None, np.zeros((0, 4))).shape == (0, 3, 48, 48)
