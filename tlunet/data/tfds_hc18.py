"""A tensorflow-datasets builder for HC18. `import tlunet` registers it:

    import tensorflow_datasets as tfds
    import tlunet  # noqa: F401
    ds = tfds.load("hc18", split="train")   # downloads the official Zenodo files, MD5-checked

With the files already on disk (the official layout), pass them as the manual dir:

    ds = tfds.load("hc18", split="train", download_and_prepare_kwargs={"download_config":
                   tfds.download.DownloadConfig(manual_dir="/path/to/hc18")})
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from tlunet.data.download import download_hc18
from tlunet.data.hc18 import CSV_NAME, find_hc18, load_hc18_record

_CITATION = """@article{van2018automated,
  title={Automated measurement of fetal head circumference using 2D ultrasound images},
  author={van den Heuvel, Thomas L. A. and de Bruijn, Dagmar and de Korte, Chris L. and
          van Ginneken, Bram},
  journal={PLoS ONE}, volume={13}, number={8}, pages={e0200412}, year={2018}}"""


class Hc18(tfds.core.GeneratorBasedBuilder):
    """HC18 fetal-head ultrasound: images, filled head masks, pixel size and head circumference."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Official training set; masks are the filled annotation ellipses."}

    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Optional: the builder downloads the files itself. To build from files you already have, unzip
    `training_set.zip` and put `training_set_pixel_size_and_HC.csv` beside it, so that `manual_dir`
    holds `training_set/NNN_HC.png`, `training_set/NNN_HC_Annotation.png` and the CSV.
    """

    def _info(self):
        return self.dataset_info_from_configs(
            description="HC18 fetal-head ultrasound (van den Heuvel et al. 2018).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 1)),
                "mask": tfds.features.Image(shape=(None, None, 1)),
                "pixel_size": np.float32,
                "head_circumference": np.float32,
                "subject": tfds.features.Text(),
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("image", "mask"),
            homepage="https://hc18.grand-challenge.org/",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        # One split: the official training set. Split it by subject (`subject` feature, or
        # tlunet.data.split_by_subject) so images of one fetus never straddle train and test.
        try:
            manual = os.fspath(dl_manager.manual_dir)
        except AssertionError:  # no manual dir given (or an empty one)
            manual = None
        if manual and os.path.isfile(os.path.join(manual, CSV_NAME)):
            root = manual
        else:  # the official files from Zenodo, checked against the record's MD5 sums
            root = download_hc18(os.path.join(os.fspath(dl_manager.download_dir), "hc18_zenodo"))
        return {"train": self._generate_examples(root)}

    def _generate_examples(self, root):
        for record in find_hc18(os.fspath(root)):
            image, mask = load_hc18_record(record)
            name = os.path.basename(record.image)
            yield name, {"image": image, "mask": mask[..., None], "pixel_size": record.pixel_size,
                         "head_circumference": record.hc_mm, "subject": record.subject,
                         "filename": name}
