"""Data samples bundled with tlunet; installed as the package `tlunet.sample_data`.

Find them with `tlunet.resources.sample_path(name)`; configs name them as `root: sample:NAME`.
"""
