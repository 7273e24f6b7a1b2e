"""Write ``src/lore/data/meta/splits/eurosat.json``: lore's EuroSAT split for copies without
CoOp's ``split_zhou_EuroSAT.json``, in CoOp's proportions (per class 50 % train, 20 % val, the rest
test, counts rounded as CoOp's ``read_and_split_data`` rounds them) over the images of the RGB
release (27,000 ``<Class>_<n>.jpg``, n = 1..count). Deterministic: rerunning writes the same file."""

import json
from pathlib import Path

import numpy as np

# images per class in the EuroSAT RGB release (Helber et al., 2019)
COUNTS = {"AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500,
          "Industrial": 2500, "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000,
          "River": 2500, "SeaLake": 3000}
P_TRAIN, P_VAL, SEED = 0.5, 0.2, 0


def main() -> None:
    rng = np.random.default_rng(SEED)
    train, val = {}, {}
    for name, n in COUNTS.items():
        order = rng.permutation(np.arange(1, n + 1))
        n_train, n_val = round(n * P_TRAIN), round(n * P_VAL)
        train[name] = sorted(order[:n_train].tolist())
        val[name] = sorted(order[n_train:n_train + n_val].tolist())
    out = Path(__file__).resolve().parents[1] / "src/lore/data/meta/splits/eurosat.json"
    out.write_text(json.dumps({"images_per_class": COUNTS, "proportions": {"train": P_TRAIN, "val": P_VAL},
                               "seed": SEED, "train": train, "val": val}, separators=(",", ":")) + "\n")
    print(out)


if __name__ == "__main__":
    main()
