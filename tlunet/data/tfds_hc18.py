"""A tensorflow-datasets builder for HC18 (manual download). Importing this module registers it:

    import tensorflow_datasets as tfds
    import tlunet.data.tfds_hc18  # noqa: F401
    ds = tfds.load("hc18", split="train", data_dir="~/tensorflow_datasets",
                   download_and_prepare_kwargs={"download_config":
                       tfds.download.DownloadConfig(manual_dir="/path/to/hc18")})
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from tlunet.data.hc18 import find_hc18, load_hc18_record

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
    Download `training_set.zip` and `training_set_pixel_size_and_HC.csv` from Zenodo
    (doi:10.5281/zenodo.1327317, CC BY 4.0) and unzip so that `manual_dir` holds
    `training_set/NNN_HC.png`, `training_set/NNN_HC_Annotation.png` and the CSV.
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
        return {"train": self._generate_examples(dl_manager.manual_dir)}

    def _generate_examples(self, root):
        for record in find_hc18(os.fspath(root)):
            image, mask = load_hc18_record(record)
            name = os.path.basename(record.image)
            yield name, {"image": image, "mask": mask[..., None], "pixel_size": record.pixel_size,
                         "head_circumference": record.hc_mm, "subject": record.subject,
                         "filename": name}
