"""How far torchvision's bilinear resizes are from TensorFlow's ``tf.image.resize`` (bilinear,
antialias=False, half-pixel centres), the resize VPT applies to VTAB-1k, on a real photo
(scikit-image's ``chelsea``, 300 x 451): shrunk to 224 x 224 (as DMLab, KITTI, Retinopathy, SUN397
are) and, after an area reduction to 32 x 32 (CIFAR / SVHN's size), enlarged to 224 x 224.

TensorFlow's resize is computed here by its definition in numpy (source pixel ``(i + 0.5) * in /
out - 0.5``, clamped to the image, linear weights in both axes). With ``--tf FILE.npz`` the
arrays ``down`` and ``up`` that tf.image.resize gave for the same two inputs (see --dump-inputs)
are compared too. Last, what the PETL image export's JPEG (PIL's default quality) does to
the same images. Differences are in 0..255 grey levels, over all pixels and channels.

    python scripts/vtab_resize_compare.py [--dump-inputs inputs.npz] [--tf tf_out.npz]
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF


def half_pixel_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """tf.image.resize(method=bilinear, antialias=False) by its definition, float64, HxWxC."""
    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo
    h0, h1, wy = axis(image.shape[0])
    w0, w1, wx = axis(image.shape[1])
    img = image.astype(np.float64)
    rows = img[h0] * (1 - wy)[:, None, None] + img[h1] * wy[:, None, None]
    return rows[:, w0] * (1 - wx)[None, :, None] + rows[:, w1] * wx[None, :, None]


def torch_resize(image: np.ndarray, size: int, antialias: bool) -> np.ndarray:
    t = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return out[0].permute(1, 2, 0).double().numpy()


def pil_resize(image: np.ndarray, size: int) -> np.ndarray:
    out = TF.resize(Image.fromarray(image), [size, size], interpolation=InterpolationMode.BILINEAR)
    return np.asarray(out, dtype=np.float64)


def inputs() -> dict[str, np.ndarray]:
    photo = data.chelsea()  # 300 x 451 x 3 uint8
    small = np.asarray(Image.fromarray(photo).resize((32, 32), Image.BOX))
    return {"down": photo, "up": small}


def jpeg_default(image: np.ndarray) -> np.ndarray:
    """What the image export stores: PIL's JPEG at its default settings (quality 75, 4:2:0 chroma)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG")
    return np.asarray(Image.open(buf), dtype=np.float64)


def stats(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a - b)
    return f"max {d.max():6.2f}  mean {d.mean():6.3f}  pixels > 1 level: {100 * (d > 1).mean():5.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump-inputs", help="write the two input images to this .npz and stop")
    parser.add_argument("--tf", help=".npz with tf.image.resize's outputs 'down' and 'up'")
    args = parser.parse_args()
    images = inputs()
    if args.dump_inputs:
        np.savez(args.dump_inputs, **images)
        return
    tf_out = np.load(args.tf) if args.tf else None
    for case, image in images.items():
        ref = half_pixel_bilinear(image, 224)
        print(f"{case}: {image.shape[0]}x{image.shape[1]} -> 224x224, against TF's formula (numpy)")
        if tf_out is not None:
            print(f"  tf.image.resize itself            {stats(tf_out[case].astype(np.float64), ref)}")
        print(f"  torch bilinear, antialias=False   {stats(torch_resize(image, 224, False), ref)}")
        print(f"  torch bilinear, antialias=True    {stats(torch_resize(image, 224, True), ref)}")
        print(f"  PIL bilinear (torchvision on PIL) {stats(pil_resize(image, 224), ref)}")
        stored = jpeg_default(image)
        print(f"  the export's JPEG, before resize  {stats(stored, image.astype(np.float64))}")
        print(f"  the export's JPEG, TF resize      {stats(half_pixel_bilinear(stored.astype(np.uint8), 224), ref)}")


if __name__ == "__main__":
    main()
